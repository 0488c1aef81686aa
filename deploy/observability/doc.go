// Package observability holds the tests (and the dashboard generator) of
// Ambit's Prometheus configuration, rules and Grafana dashboards: the
// files in prometheus/ and grafana/ are what users load; this package
// checks them with promtool and against a real Prometheus scraping a lab
// under traffic.
package observability
