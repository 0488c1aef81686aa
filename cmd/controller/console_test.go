package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestConsoleRefusesNonLocal(t *testing.T) {
	for _, args := range [][]string{
		{"--listen", "0.0.0.0:0"},
		{"--listen", ":0"},
		{"--listen", "0.0.0.0:0", "--console-allow-remote"}, // no token
	} {
		var stderr bytes.Buffer
		if code := run(append([]string{"console"}, args...), io.Discard, &stderr); code != 1 || !strings.Contains(stderr.String(), "not loopback") {
			t.Errorf("controller console %v: exit %d, %q", args, code, stderr.String())
		}
	}
}

// TestConsoleInProcess serves the console of `controller run --console`
// on an admin handler, with no admin listener.
func TestConsoleInProcess(t *testing.T) {
	adminH := http.NewServeMux()
	adminH.HandleFunc("/config_dump", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte(`{"version":"v3","trustDomain":"cluster.local","rejected":{"version":"v4","reason":"two Waypoints named demo/wp"},"resources":[]}`))
	})
	adminH.HandleFunc("/debug/proxies", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte(`{"proxies":[{"node":"node-1","kind":"node","peer":"127.0.0.1:1","ackedVersion":"v3","upToDate":true}]}`))
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cf := consoleFlags{addr: "127.0.0.1:0", scrapeInterval: time.Hour, window: time.Minute, metricsPort: 1}
	srv, err := cf.start(ctx, nil, slog.New(slog.DiscardHandler))
	if err == nil || srv != nil {
		t.Fatal("a console without a controller started")
	}
	var logs bytes.Buffer
	if err := cf.startInProcess(ctx, adminH, slog.New(slog.NewTextHandler(&logs, nil))); err != nil {
		t.Fatal(err)
	}
	// The address is in the log line.
	var url string
	for _, f := range strings.Fields(logs.String()) {
		if u, ok := strings.CutPrefix(f, "addr="); ok {
			url = u
		}
	}
	resp, err := http.Get(url + "api/validation")
	if err != nil {
		t.Fatalf("%v (log: %s)", err, logs.String())
	}
	defer resp.Body.Close()
	var v struct {
		Version string `json:"version"`
		Refused []struct{ By, What, Reason string }
		Proxies []struct{ Node string }
	}
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		t.Fatal(err)
	}
	if v.Version != "v3" || len(v.Refused) != 1 || v.Refused[0].By != "controller" || v.Refused[0].What != "version v4" || len(v.Proxies) != 1 {
		t.Errorf("validation through the in-process console: %+v", v)
	}
	if cf := (consoleFlags{}); cf.startInProcess(ctx, adminH, slog.New(slog.DiscardHandler)) != nil {
		t.Error("no --console: startInProcess failed")
	}
}
