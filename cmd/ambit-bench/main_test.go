package main

import (
	"bytes"
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/internal/bench"
	"github.com/ambit-mesh/ambit/internal/testutil"
)

func ambitBench(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(t.Context(), args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestUsageAndFlags(t *testing.T) {
	tests := []struct {
		args   []string
		code   int
		stderr string
	}{
		{[]string{"-h"}, 0, "rr-client [flags] ADDR"},
		{[]string{"-modes", "direct,bogus"}, 2, `unknown mode "bogus"`},
		{[]string{"-modes", ""}, 2, "no modes given"},
		{[]string{"-duration", "100ms"}, 2, "-duration must be at least 1s"},
		{[]string{"-size", "0"}, 2, "at least 1"},
		{[]string{"-max-conns", "0"}, 2, "-max-conns at least 1"},
		{[]string{"-rounds", "0"}, 2, "-rounds must be at least 1"},
		{[]string{"-rounds", "-2"}, 2, "-rounds must be at least 1"},
		{[]string{"-rounds", "x"}, 2, `invalid value "x" for flag -rounds`},
		{[]string{"extra"}, 2, `unexpected argument "extra"`},
		{[]string{"rr-client"}, 2, "exactly one ADDR"},
		{[]string{"rr-server", "a", "b"}, 2, "exactly one ADDR"},
	}
	for _, tt := range tests {
		code, _, errs := ambitBench(t, tt.args...)
		if code != tt.code || !strings.Contains(errs, tt.stderr) {
			t.Errorf("ambit-bench %q: code %d, stderr %q; want %d and %q", tt.args, code, errs, tt.code, tt.stderr)
		}
	}
}

func TestParseFlagsDefaults(t *testing.T) {
	var errb bytes.Buffer
	cfg, out, strict, code := parseFlags([]string{"-modes", "nginx,direct", "-size", "512", "-proxy-cpus", "2"}, &errb)
	if code != -1 {
		t.Fatalf("code %d: %s", code, errb.String())
	}
	if strings.Join(cfg.Modes, ",") != "nginx,direct" || cfg.ReqSize != 512 || cfg.RespSize != 512 || cfg.ProxyCPUs != "2" ||
		cfg.Duration != 8*time.Second || cfg.Omit != time.Second || cfg.Rounds != 4 || out != "bench/out/bench.json" || strict ||
		len(cfg.Helper) != 1 || !strings.HasSuffix(cfg.NodeProxy, "/nodeproxy") {
		t.Errorf("config %+v, out %q, strict %v", cfg, out, strict)
	}
}

func TestParseFlagsRounds(t *testing.T) {
	var errb bytes.Buffer
	cfg, _, _, code := parseFlags([]string{"-rounds", "3", "-modes", "waypoint,nginx-http"}, &errb)
	if code != -1 || cfg.Rounds != 3 {
		t.Errorf("-rounds 3: code %d, rounds %d: %s", code, cfg.Rounds, errb.String())
	}
}

// The in-pod subcommands work through the command line.
func TestHelpers(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go func() { _ = bench.RRServe(ln) }()
	defer ln.Close()
	addr := ln.Addr().String()

	code, out, errs := ambitBench(t, "probe", "-timeout", "1s", addr)
	if code != 0 || !strings.Contains(out, "answers") {
		t.Errorf("probe: %d %q %q", code, out, errs)
	}
	code, out, errs = ambitBench(t, "rr-client", "-rate", "100", "-conns", "1", "-duration", "200ms", "-warmup", "0s", addr)
	r, perr := bench.ParseRR([]byte(out))
	if code != 0 || perr != nil || r.Kind != "rate" || r.Count < 15 {
		t.Errorf("rr-client: %d %q %q: %+v %v", code, out, errs, r, perr)
	}

	// rr-server stops when its context ends.
	srvCtx, srvCancel := context.WithCancel(ctx)
	done := make(chan int)
	var srvOut testutil.SyncBuffer
	go func() { done <- run(srvCtx, []string{"rr-server", "127.0.0.1:0"}, &srvOut, &srvOut) }()
	testutil.WaitFor(t, "rr-server to listen", func() bool { return strings.Contains(srvOut.String(), "listening on 127.0.0.1:") })
	srvCancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Errorf("rr-server: %d %q", code, srvOut.String())
		}
	case <-time.After(5 * time.Second):
		t.Fatal("rr-server did not stop")
	}

	deadAddr := testutil.FreeAddr(t)
	if code, _, errs := ambitBench(t, "probe", "-timeout", "300ms", deadAddr); code != 1 || !strings.Contains(errs, "no answer") {
		t.Errorf("probe of a closed port: %d %q", code, errs)
	}
}
