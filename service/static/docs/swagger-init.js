// Starts Swagger UI on /docs from the vendored bundle, with the OpenAPI URL the page names
// (data-openapi-url); a file of its own so that the page needs no inline script.
"use strict";
window.addEventListener("DOMContentLoaded", function () {
  var node = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: node.dataset.openapiUrl,
    domNode: node,
    layout: "BaseLayout",
    deepLinking: true,
    showExtensions: true,
    showCommonExtensions: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
  });
});
