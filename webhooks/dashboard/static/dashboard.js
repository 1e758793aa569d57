// Draws each <canvas data-chart="ID"> with the Chart.js configuration in the JSON block
// <script type="application/json" id="ID">. All charting is Chart.js's (vendor/).
"use strict";
document.querySelectorAll("canvas[data-chart]").forEach(function (canvas) {
  var source = document.getElementById(canvas.dataset.chart);
  if (source && window.Chart) {
    new window.Chart(canvas, JSON.parse(source.textContent));
  }
});
