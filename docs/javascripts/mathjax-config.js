// MathJax 3 settings for the whole site, read by assets/mathjax/tex-chtml.js (loaded next,
// from this site: never from a CDN).
//  * Pages and docstrings: pymdownx.arithmatex (generic mode) writes \( \) and \[ \] inside
//    elements of class "arithmatex".
//  * Notebooks: mkdocs-jupyter leaves the $ $ and $$ $$ of markdown cells in elements of
//    class "jp-RenderedMarkdown".
// Everything else (code, outputs, prose with a dollar sign) is left alone: an element with
// a class is skipped, with its descendants, unless the class is one of those two; inside
// them, elements without a class (p, em, li, ...) are read.
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"], ["$", "$"]],
    displayMath: [["\\[", "\\]"], ["$$", "$$"]],
    processEscapes: true,
    processEnvironments: true,
  },
  options: {
    ignoreHtmlClass: ".+",
    processHtmlClass: "arithmatex|jp-RenderedMarkdown",
  },
};
