package observability

import (
	"bytes"
	"encoding/json"
	"fmt"
)

// Dashboards are the Grafana dashboards in grafana/, generated from this
// file so that every panel's query is written once and tested against a
// real Prometheus (lab_test.go). Regenerate the JSON with
//
//	go test ./deploy/observability -run TestDashboardsUpToDate -update
//
// The model is Grafana's dashboard JSON (schemaVersion 39), written with
// plain structs: Grafana reads the files as they are, no SDK needed.
func Dashboards() []Dashboard {
	return []Dashboard{meshOverview(), serviceDashboard(), workloadDashboard(), nodeProxyDashboard(), waypointDashboard(), gatewayDashboard(), controllerDashboard()}
}

// Dashboard is one Grafana dashboard.
type Dashboard struct {
	UID, Title, Description string
	Vars                    []Var
	Rows                    []Row
}

// Var is a query variable: the values of Label on Metric, filtered by the
// variables before it.
type Var struct {
	Name, Label, Metric string
}

// Row is a titled row of panels, laid out left to right.
type Row struct {
	Title  string
	Panels []Panel
}

// Panel is a time series (or, Stat, a single value) with its queries.
type Panel struct {
	Title, Description, Unit string
	Stat                     bool
	Queries                  []Query
	// Quiet marks a panel whose series exist but may stay at zero under
	// ordinary traffic (NACKs, refusals, limits): the lab test asks it for
	// series only, not for a value above zero.
	Quiet bool
}

// Query is one PromQL target and its legend.
type Query struct {
	Expr, Legend string
}

const rate = "$__rate_interval"

func meshOverview() Dashboard {
	return Dashboard{
		UID: "ambit-mesh", Title: "Ambit / Mesh overview",
		Description: "The whole mesh: L7 golden signals from the waypoints and the gateways, L4 from the node proxies, denials, and the health of the proxies and the controller.",
		Rows: []Row{
			{"Mesh", []Panel{
				{Title: "Requests", Unit: "reqps", Stat: true, Queries: []Query{{"ambit:requests:rate5m", "requests/s"}}},
				{Title: "Error ratio", Unit: "percentunit", Stat: true, Queries: []Query{{"ambit:request_error_ratio:rate5m", "errors"}}},
				{Title: "TCP throughput", Unit: "Bps", Stat: true, Queries: []Query{{"ambit:tcp_bytes:rate5m", "bytes/s"}}},
				{Title: "Denied connections", Unit: "cps", Stat: true, Queries: []Query{{"sum(ambit:tcp_connections_denied:rate5m)", "denied/s"}}},
				{Title: "Node proxies up", Stat: true, Queries: []Query{{`sum(up{job="ambit-nodeproxy"})`, "up"}}},
				{Title: "Proxies connected to the controller", Stat: true, Queries: []Query{{"sum(ambit_controller_connected_proxies)", "connected"}}},
			}},
			{"Services (through waypoints)", []Panel{
				{Title: "Requests by service", Unit: "reqps", Queries: []Query{{"namespace_service:ambit_requests:rate5m", "{{destination_service}}"}}},
				{Title: "Error ratio by service", Unit: "percentunit", Queries: []Query{{"namespace_service:ambit_request_error_ratio:rate5m", "{{destination_service}}"}}},
				{Title: "p99 latency by service", Unit: "s", Queries: []Query{{`namespace_service:ambit_request_duration_seconds:histogram_quantile{quantile="0.99"}`, "{{destination_service}}"}}},
				{Title: "Waypoint denials by service", Unit: "reqps", Queries: []Query{{"namespace_service:ambit_request_denials:rate5m", "{{destination_service}}"}}},
			}},
			{"Gateways", []Panel{
				{Title: "Requests by gateway", Unit: "reqps", Queries: []Query{{"namespace_gateway:ambit_requests:rate5m", "{{namespace}}/{{gateway}}"}}},
				{Title: "Error ratio by gateway", Unit: "percentunit", Queries: []Query{{"namespace_gateway:ambit_request_error_ratio:rate5m", "{{namespace}}/{{gateway}}"}}},
			}},
			{"Workloads (node proxies)", []Panel{
				{Title: "TCP bytes received by workload", Unit: "Bps", Queries: []Query{{"namespace_workload:ambit_tcp_sent_bytes:rate5m", "{{destination_namespace}}/{{destination_workload}}"}}},
				{Title: "New connections by workload", Unit: "cps", Queries: []Query{{"namespace_workload:ambit_tcp_connections_opened:rate5m", "{{destination_namespace}}/{{destination_workload}}"}}},
				{Title: "Denied connections by reason", Unit: "cps", Queries: []Query{{"ambit:tcp_connections_denied:rate5m", "{{reason}}"}}},
				{Title: "Soonest certificate expiry by node", Unit: "s", Queries: []Query{{"ambit:certificate_expiry_seconds:min", "{{node}}"}}},
			}},
		},
	}
}

func serviceDashboard() Dashboard {
	sel := `destination_namespace="$namespace", destination_service="$service"`
	// The raw request metrics of the waypoint only, as the rules count
	// them: a gateway's reports of the Service are on the gateway's
	// dashboard.
	wp := `reporter="waypoint", ` + sel
	return Dashboard{
		UID: "ambit-service", Title: "Ambit / Service",
		Description: "One Service's golden signals, measured by the waypoint it uses (requests through a gateway: see the gateway's dashboard).",
		Vars: []Var{
			{"namespace", "destination_namespace", "namespace_service:ambit_requests:rate5m"},
			{"service", "destination_service", `namespace_service:ambit_requests:rate5m{destination_namespace="$namespace"}`},
		},
		Rows: []Row{
			{"Golden signals", []Panel{
				{Title: "Requests", Unit: "reqps", Queries: []Query{{"namespace_service:ambit_requests:rate5m{" + sel + "}", "requests/s"}}},
				{Title: "Error ratio", Unit: "percentunit", Queries: []Query{{"namespace_service:ambit_request_error_ratio:rate5m{" + sel + "}", "errors"}}},
				{Title: "Latency", Unit: "s", Queries: []Query{{"namespace_service:ambit_request_duration_seconds:histogram_quantile{" + sel + "}", "p{{quantile}}"}}},
				{Title: "Denied by policy (403 at the waypoint)", Unit: "reqps", Queries: []Query{{"namespace_service:ambit_request_denials:rate5m{" + sel + "}", "denied/s"}}},
			}},
			{"Breakdown", []Panel{
				{Title: "Requests by response code", Unit: "reqps", Queries: []Query{{"sum by (response_code) (rate(ambit_requests_total{" + wp + "}[" + rate + "]))", "{{response_code}}"}}},
				{Title: "Requests by client workload", Unit: "reqps", Queries: []Query{{"sum by (source_namespace, source_workload) (rate(ambit_requests_total{" + wp + "}[" + rate + "]))", "{{source_namespace}}/{{source_workload}}"}}},
				{Title: "Requests by serving workload", Unit: "reqps", Queries: []Query{{"sum by (destination_workload) (rate(ambit_requests_total{" + wp + `, destination_workload!=""}[` + rate + "]))", "{{destination_workload}}"}}},
				{Title: "p99 latency by route", Unit: "s", Queries: []Query{{"histogram_quantile(0.99, sum by (route, le) (rate(ambit_request_duration_seconds_bucket{" + wp + "}[" + rate + "])))", "{{route}}"}}},
				{Title: "Request and response bytes", Unit: "Bps", Queries: []Query{
					{"namespace_service:ambit_request_bytes:rate5m{" + sel + "}", "request"},
					{"namespace_service:ambit_response_bytes:rate5m{" + sel + "}", "response"},
				}},
			}},
		},
	}
}

func workloadDashboard() Dashboard {
	dst := `destination_namespace="$namespace", destination_workload="$workload"`
	src := `source_namespace="$namespace", source_workload="$workload"`
	return Dashboard{
		UID: "ambit-workload", Title: "Ambit / Workload",
		Description: "One workload: requests it served through waypoints (L7), and the TCP traffic its node proxy carried to and from it (L4).",
		Vars: []Var{
			{"namespace", "destination_namespace", "namespace_workload:ambit_tcp_connections_opened:rate5m"},
			{"workload", "destination_workload", `namespace_workload:ambit_tcp_connections_opened:rate5m{destination_namespace="$namespace"}`},
		},
		Rows: []Row{
			{"Requests served (L7, through waypoints)", []Panel{
				{Title: "Requests", Unit: "reqps", Queries: []Query{{"namespace_workload:ambit_requests:rate5m{" + dst + "}", "requests/s"}}},
				{Title: "Error ratio", Unit: "percentunit", Queries: []Query{{"namespace_workload:ambit_request_error_ratio:rate5m{" + dst + "}", "errors"}}},
				{Title: "Latency", Unit: "s", Queries: []Query{{"namespace_workload:ambit_request_duration_seconds:histogram_quantile{" + dst + "}", "p{{quantile}}"}}},
			}},
			{"Inbound TCP (L4)", []Panel{
				{Title: "Bytes", Unit: "Bps", Queries: []Query{
					{"namespace_workload:ambit_tcp_sent_bytes:rate5m{" + dst + "}", "from clients"},
					{"namespace_workload:ambit_tcp_received_bytes:rate5m{" + dst + "}", "to clients"},
				}},
				{Title: "Connections", Unit: "cps", Queries: []Query{
					{"namespace_workload:ambit_tcp_connections_opened:rate5m{" + dst + "}", "opened"},
					{"namespace_workload:ambit_tcp_connections_closed:rate5m{" + dst + "}", "closed"},
				}},
				{Title: "Open connections", Queries: []Query{{"namespace_workload:ambit_tcp_connections_open:sum{" + dst + "}", "open"}}},
				{Title: "Inbound by client identity", Unit: "cps", Queries: []Query{{`sum by (source_identity) (rate(ambit_tcp_connections_opened_total{job="ambit-nodeproxy", direction=~"inbound.*", ` + dst + "}[" + rate + "]))", "{{source_identity}}"}}},
				{Title: "Denied connections", Unit: "cps", Queries: []Query{{"namespace_workload:ambit_tcp_connections_denied:rate5m{" + dst + "}", "{{reason}}"}}},
			}},
			{"Outbound TCP (L4)", []Panel{
				{Title: "Bytes", Unit: "Bps", Queries: []Query{
					{"namespace_source_workload:ambit_tcp_sent_bytes:rate5m{" + src + "}", "sent"},
					{"namespace_source_workload:ambit_tcp_received_bytes:rate5m{" + src + "}", "received"},
				}},
				{Title: "New connections", Unit: "cps", Queries: []Query{{"namespace_source_workload:ambit_tcp_connections_opened:rate5m{" + src + "}", "opened"}}},
			}},
		},
	}
}

func nodeProxyDashboard() Dashboard {
	np := `job="ambit-nodeproxy", node="$node"`
	return Dashboard{
		UID: "ambit-nodeproxy", Title: "Ambit / Node proxy",
		Description: "One node's proxy: capture, tunnels, connections, certificates and the process.",
		Vars:        []Var{{"node", "node", `up{job="ambit-nodeproxy"}`}},
		Rows: []Row{
			{"State", []Panel{
				{Title: "Up", Stat: true, Queries: []Query{{"up{" + np + "}", "{{pod}}"}}},
				{Title: "Captured pods", Stat: true, Queries: []Query{{"ambit_captured_pods{" + np + "}", "pods"}}},
				{Title: "Tunnel pool connections", Queries: []Query{{"ambit_tunnel_pool_connections{" + np + "}", "{{protocol}}"}}},
				{Title: "Certificate expiry", Unit: "s", Queries: []Query{{"ambit_certificate_expiry_timestamp_seconds{" + np + "} - time()", "{{identity}}"}}},
			}},
			{"Traffic", []Panel{
				{Title: "New connections by direction", Unit: "cps", Queries: []Query{{"sum by (direction) (rate(ambit_tcp_connections_opened_total{" + np + "}[" + rate + "]))", "{{direction}}"}}},
				{Title: "Bytes by direction", Unit: "Bps", Queries: []Query{
					{"sum by (direction) (rate(ambit_tcp_sent_bytes_total{" + np + "}[" + rate + "]))", "{{direction}} sent"},
					{"sum by (direction) (rate(ambit_tcp_received_bytes_total{" + np + "}[" + rate + "]))", "{{direction}} received"},
				}},
				{Title: "Denied connections by reason", Unit: "cps", Queries: []Query{{"sum by (reason) (rate(ambit_tcp_connections_denied_total{" + np + "}[" + rate + "]))", "{{reason}}"}}},
				{Title: "Tunnel limits that fired", Unit: "ops", Quiet: true, Queries: []Query{{"sum by (limit) (rate(ambit_tunnel_limits_total{" + np + "}[" + rate + "]))", "{{limit}}"}}},
			}},
			{"Process", processPanels(np)},
		},
	}
}

func waypointDashboard() Dashboard {
	wp := `job="ambit-waypoint", namespace="$namespace", waypoint="$waypoint"`
	return Dashboard{
		UID: "ambit-waypoint", Title: "Ambit / Waypoint",
		Description: "One waypoint's L7 traffic and its resilience machinery (retries, circuit breakers, outlier ejection, rate limits).",
		Vars: []Var{
			{"namespace", "namespace", `up{job="ambit-waypoint"}`},
			{"waypoint", "waypoint", `up{job="ambit-waypoint", namespace="$namespace"}`},
		},
		Rows: []Row{
			{"Requests", []Panel{
				{Title: "Requests by service", Unit: "reqps", Queries: []Query{{"sum by (destination_service) (rate(ambit_requests_total{" + wp + "}[" + rate + "]))", "{{destination_service}}"}}},
				{Title: "Requests by response code", Unit: "reqps", Queries: []Query{{"sum by (response_code) (rate(ambit_requests_total{" + wp + "}[" + rate + "]))", "{{response_code}}"}}},
				{Title: "p99 latency by service", Unit: "s", Queries: []Query{{"histogram_quantile(0.99, sum by (destination_service, le) (rate(ambit_request_duration_seconds_bucket{" + wp + "}[" + rate + "])))", "{{destination_service}}"}}},
				{Title: "TCP streams relayed", Unit: "cps", Queries: []Query{{"sum by (destination_workload) (rate(ambit_tcp_connections_opened_total{" + wp + "}[" + rate + "]))", "{{destination_workload}}"}}},
			}},
			{"Upstreams", []Panel{
				{Title: "Requests admitted by destination", Unit: "reqps", Queries: []Query{{"sum by (destination) (rate(ambit_upstream_requests_total{" + wp + "}[" + rate + "]))", "{{destination}}"}}},
				{Title: "Active requests", Quiet: true, Queries: []Query{{"sum by (destination) (ambit_upstream_active_requests{" + wp + "})", "{{destination}}"}}},
				{Title: "Retries", Unit: "ops", Quiet: true, Queries: []Query{{"sum by (destination) (rate(ambit_upstream_retries_total{" + wp + "}[" + rate + "]))", "{{destination}}"}}},
				{Title: "Circuit breaker overflow and rate limits", Unit: "reqps", Quiet: true, Queries: []Query{
					{"sum by (destination, cap) (rate(ambit_upstream_overflow_total{" + wp + "}[" + rate + "]))", "{{destination}} {{cap}}"},
					{"sum by (destination) (rate(ambit_upstream_rate_limited_total{" + wp + "}[" + rate + "]))", "{{destination}} rate limited"},
				}},
				{Title: "Ejected endpoints", Quiet: true, Queries: []Query{{"sum by (destination) (ambit_upstream_ejected_endpoints{" + wp + "})", "{{destination}}"}}},
			}},
			{"Process", processPanels(wp)},
		},
	}
}

func gatewayDashboard() Dashboard {
	gw := `namespace="$namespace", gateway="$gateway"`
	raw := `job="ambit-gateway", ` + gw
	quantiles := func(by, legend string) []Query {
		var qs []Query
		for _, q := range [][2]string{{"0.5", "p50"}, {"0.9", "p90"}, {"0.99", "p99"}} {
			qs = append(qs, Query{"histogram_quantile(" + q[0] + ", sum by (" + by + "le) (rate(ambit_request_duration_seconds_bucket{" + raw + "}[" + rate + "])))", legend + " " + q[1]})
		}
		return qs
	}
	return Dashboard{
		UID: "ambit-gateway", Title: "Ambit / Gateway",
		Description: "One Gateway's proxy (ingress or egress): its requests, errors and latency, by the destination Service its routes chose and by route.",
		Vars: []Var{
			{"namespace", "namespace", `up{job="ambit-gateway"}`},
			{"gateway", "gateway", `up{job="ambit-gateway", namespace="$namespace"}`},
		},
		Rows: []Row{
			{"Golden signals", []Panel{
				{Title: "Requests", Unit: "reqps", Queries: []Query{{"namespace_gateway:ambit_requests:rate5m{" + gw + "}", "requests/s"}}},
				{Title: "Error ratio", Unit: "percentunit", Queries: []Query{{"namespace_gateway:ambit_request_error_ratio:rate5m{" + gw + "}", "errors"}}},
				{Title: "Latency", Unit: "s", Queries: []Query{{"namespace_gateway:ambit_request_duration_seconds:histogram_quantile{" + gw + "}", "p{{quantile}}"}}},
				{Title: "Requests by response code", Unit: "reqps", Queries: []Query{{"sum by (response_code) (rate(ambit_requests_total{" + raw + "}[" + rate + "]))", "{{response_code}}"}}},
			}},
			{"By destination service", []Panel{
				{Title: "Requests by service", Unit: "reqps", Queries: []Query{{"namespace_gateway_service:ambit_requests:rate5m{" + gw + "}", "{{destination_service}}"}}},
				{Title: "Error ratio by service", Unit: "percentunit", Queries: []Query{{"namespace_gateway_service:ambit_request_error_ratio:rate5m{" + gw + "}", "{{destination_service}}"}}},
				{Title: "Latency by service", Unit: "s", Queries: []Query{{"namespace_gateway_service:ambit_request_duration_seconds:histogram_quantile{" + gw + "}", "{{destination_service}} p{{quantile}}"}}},
				{Title: "Requests by serving workload", Unit: "reqps", Queries: []Query{{"sum by (destination_namespace, destination_workload) (rate(ambit_requests_total{" + raw + `, destination_workload!=""}[` + rate + "]))", "{{destination_namespace}}/{{destination_workload}}"}}},
			}},
			{"By route", []Panel{
				{Title: "Requests by route and response code", Unit: "reqps", Queries: []Query{{"sum by (route, response_code) (rate(ambit_requests_total{" + raw + "}[" + rate + "]))", "{{route}} {{response_code}}"}}},
				{Title: "Latency by route", Unit: "s", Queries: quantiles("route, ", "{{route}}")},
			}},
			{"Process", processPanels(raw)},
		},
	}
}

func controllerDashboard() Dashboard {
	c := `job="ambit-controller"`
	return Dashboard{
		UID: "ambit-controller", Title: "Ambit / Controller",
		Description: "The control plane: configuration pushes and their ACKs, certificates, and the calls its limits refuse.",
		Rows: []Row{
			{"Configuration", []Panel{
				{Title: "Connected proxies", Stat: true, Queries: []Query{{"sum(ambit_controller_connected_proxies{" + c + "})", "proxies"}}},
				{Title: "Configuration version", Stat: true, Queries: []Query{{"ambit_controller_config_info{" + c + "}", "{{version}}"}}},
				{Title: "Pushes by type", Unit: "ops", Queries: []Query{{"sum by (type) (rate(ambit_controller_pushes_total{" + c + "}[" + rate + "]))", "{{type}}"}}},
				{Title: "Push latency (change to ACK)", Unit: "s", Queries: []Query{
					{"histogram_quantile(0.5, sum by (le) (rate(ambit_controller_push_latency_seconds_bucket{" + c + "}[" + rate + "])))", "p50"},
					{"histogram_quantile(0.99, sum by (le) (rate(ambit_controller_push_latency_seconds_bucket{" + c + "}[" + rate + "])))", "p99"},
				}},
				{Title: "Resources pushed", Unit: "ops", Queries: []Query{{"sum(rate(ambit_controller_pushed_resources_total{" + c + "}[" + rate + "]))", "resources/s"}}},
				{Title: "Snapshot build time p99", Unit: "s", Queries: []Query{{"histogram_quantile(0.99, sum by (le) (rate(ambit_controller_snapshot_build_seconds_bucket{" + c + "}[" + rate + "])))", "p99"}}},
				{Title: "NACKs and refused configurations", Unit: "short", Quiet: true, Queries: []Query{
					{"sum(increase(ambit_controller_nacks_total{" + c + "}[" + rate + "]))", "NACKs"},
					{"sum(increase(ambit_controller_config_rejected_total{" + c + "}[" + rate + "]))", "configurations refused"},
				}},
			}},
			{"Certificates and limits", []Panel{
				{Title: "Certificate requests by result", Unit: "ops", Quiet: true, Queries: []Query{{"sum by (result) (rate(ambit_controller_certificates_total{" + c + "}[" + rate + "]))", "{{result}}"}}},
				{Title: "Refused calls by reason", Unit: "ops", Quiet: true, Queries: []Query{{"sum by (reason) (rate(ambit_controller_refused_total{" + c + "}[" + rate + "]))", "{{reason}}"}}},
				{Title: "Authentication failures", Unit: "ops", Quiet: true, Queries: []Query{{"sum(rate(ambit_controller_authentication_failures_total{" + c + "}[" + rate + "]))", "failures/s"}}},
			}},
			{"Process", processPanels(c)},
		},
	}
}

func processPanels(sel string) []Panel {
	return []Panel{
		{Title: "CPU", Unit: "percentunit", Queries: []Query{{"rate(process_cpu_seconds_total{" + sel + "}[" + rate + "])", "{{pod}}"}}},
		{Title: "Resident memory", Unit: "bytes", Queries: []Query{{"process_resident_memory_bytes{" + sel + "}", "{{pod}}"}}},
		{Title: "Goroutines", Queries: []Query{{"go_goroutines{" + sel + "}", "{{pod}}"}}},
		{Title: "Open file descriptors", Queries: []Query{{"process_open_fds{" + sel + "}", "{{pod}}"}}},
	}
}

// JSON renders d as a Grafana dashboard (indented, stable).
func (d Dashboard) JSON() ([]byte, error) {
	type obj = map[string]any
	ds := obj{"type": "prometheus", "uid": "${datasource}"}
	vars := []any{obj{
		"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
		"current": obj{}, "hide": 0, "refresh": 1,
	}}
	for _, v := range d.Vars {
		q := fmt.Sprintf("label_values(%s, %s)", v.Metric, v.Label)
		vars = append(vars, obj{
			"name": v.Name, "label": v.Name, "type": "query", "datasource": ds,
			"query":      obj{"query": q, "refId": "PrometheusVariableQueryEditor-VariableQuery", "qryType": 1},
			"definition": q, "refresh": 2, "sort": 1, "current": obj{}, "hide": 0,
			"includeAll": false, "multi": false,
		})
	}
	var panels []any
	id, y := 1, 0
	for _, r := range d.Rows {
		panels = append(panels, obj{"id": id, "type": "row", "title": r.Title, "collapsed": false,
			"gridPos": obj{"h": 1, "w": 24, "x": 0, "y": y}, "panels": []any{}})
		id++
		y++
		x, lineH := 0, 0
		for _, p := range r.Panels {
			w, h, typ := 12, 8, "timeseries"
			if p.Stat {
				w, h, typ = 4, 4, "stat"
			}
			if x+w > 24 {
				x, y, lineH = 0, y+lineH, 0
			}
			lineH = max(lineH, h)
			var targets []any
			for i, q := range p.Queries {
				targets = append(targets, obj{"refId": string(rune('A' + i)), "datasource": ds, "expr": q.Expr, "legendFormat": q.Legend, "range": true})
			}
			unit := p.Unit
			if unit == "" {
				unit = "short"
			}
			panels = append(panels, obj{
				"id": id, "type": typ, "title": p.Title, "description": p.Description, "datasource": ds,
				"gridPos":     obj{"h": h, "w": w, "x": x, "y": y},
				"targets":     targets,
				"fieldConfig": obj{"defaults": obj{"unit": unit}, "overrides": []any{}},
				"options":     obj{},
			})
			id++
			x += w
		}
		y += lineH
	}
	doc := obj{
		"uid": d.UID, "title": d.Title, "description": d.Description,
		"tags": []string{"ambit"}, "editable": true, "schemaVersion": 39, "version": 1,
		"time": obj{"from": "now-1h", "to": "now"}, "refresh": "30s", "timezone": "",
		"graphTooltip": 1, "templating": obj{"list": vars}, "annotations": obj{"list": []any{}},
		"links":  []any{obj{"title": "Ambit", "type": "dashboards", "tags": []string{"ambit"}, "asDropdown": true}},
		"panels": panels,
	}
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	if err := enc.Encode(doc); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// FileName is the dashboard's file in grafana/.
func (d Dashboard) FileName() string { return d.UID + ".json" }
