// Package console is the mesh console the controller serves: a read-only
// web page (plain HTML, JavaScript and SVG embedded in the binary, no
// build step) with a live service graph, a page per workload and the
// configuration's validation state, and the JSON API behind it
// (/api/graph, /api/workload, /api/validation).
//
// The configuration comes from the controller's admin endpoint
// (/config_dump, /debug/proxies), in process or over HTTP (Controller).
// Traffic comes from the proxies' metrics (Metrics): scraped from each
// connected proxy directly (Scraper) or read from Prometheus
// (Prometheus). BuildGraph turns two snapshots of samples and the
// configuration into the graph; it is pure and table-tested.
//
// The console listens on loopback unless told otherwise (CheckListen),
// answers only GET and HEAD, refuses Host names that are not localhost or
// an IP literal when no token guards it (DNS rebinding), and requires the
// token, when one is set, on every request. docs/console.md describes it
// for users.
package console
