package main

import "testing"

func TestOTLPTarget(t *testing.T) {
	for _, tc := range []struct {
		in, hostport string
		insecure     bool
	}{
		{"collector:4317", "collector:4317", false},
		{"http://otel-collector.observability:4317/", "otel-collector.observability:4317", true},
		{"https://api.vendor.example:443", "api.vendor.example:443", false},
	} {
		if hp, ins := otlpTarget(tc.in); hp != tc.hostport || ins != tc.insecure {
			t.Errorf("%q: %q insecure=%v, want %q %v", tc.in, hp, ins, tc.hostport, tc.insecure)
		}
	}
	t.Setenv("AMBIT_OTLP_ENDPOINT", "")
	t.Setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "")
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317")
	if got := otlpFromEnv(); got != "http://c:4317" {
		t.Errorf("from the environment: %q", got)
	}
	t.Setenv("AMBIT_OTLP_ENDPOINT", "mine:4317")
	if got := otlpFromEnv(); got != "mine:4317" {
		t.Errorf("AMBIT_OTLP_ENDPOINT first: %q", got)
	}
}
