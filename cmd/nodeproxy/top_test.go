package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/internal/admin"
	"github.com/ambit-mesh/ambit/internal/console"
)

func TestComputeAndRenderTop(t *testing.T) {
	t0 := time.Date(2026, 12, 7, 4, 0, 0, 0, time.UTC)
	conn := func(id uint64, dir, src, dst string, sent, recv uint64) admin.Connection {
		return admin.Connection{ID: id, Direction: dir, Src: "10.1.1.2:40000", Dst: "10.1.2.3:8080", SrcWorkload: src, DstWorkload: dst, Transport: admin.TransportHBONEH2, Started: t0.Add(-time.Minute), BytesSent: sent, BytesReceived: recv}
	}
	opened := func(dir, srcW, dstW string, v float64) console.Sample {
		ns := func(w string) string {
			if w == "" {
				return ""
			}
			return "demo"
		}
		return console.Sample{Name: "ambit_tcp_connections_opened_total", Value: v, Labels: map[string]string{"direction": dir, "source_namespace": ns(srcW), "source_workload": srcW, "destination_namespace": ns(dstW), "destination_workload": dstW}}
	}
	prev := topReading{At: t0, Conns: []admin.Connection{conn(1, "outbound", "demo/client-1", "demo/server-2", 1000, 500)},
		Samples: []console.Sample{opened("outbound", "client-1", "server-2", 10)}}
	cur := topReading{At: t0.Add(2 * time.Second),
		Conns: []admin.Connection{
			conn(1, "outbound", "demo/client-1", "demo/server-2", 5000, 2500),
			conn(2, "inbound", "demo/client-2", "demo/server-1", 300, 100), // new: all its bytes
		},
		Samples: []console.Sample{opened("outbound", "client-1", "server-2", 16), opened("inbound", "client-2", "server-1", 1),
			{Name: "ambit_tcp_connections_denied_total", Value: 4, Labels: map[string]string{"direction": "inbound", "destination_namespace": "demo", "destination_workload": "server-1", "reason": "policy"}}}}
	s := computeTop(prev, cur)
	if s.Interval != 2 || len(s.Conns) != 2 || s.Conns[0].ID != 1 || s.Conns[0].SentRate != 2000 || s.Conns[0].RecvRate != 1000 || s.Conns[1].SentRate != 150 {
		t.Fatalf("connections: %+v", s)
	}
	loads := map[string]TopWorkload{}
	for _, l := range s.Loads {
		loads[l.Workload] = l
	}
	if l := loads["demo/client-1"]; l.Open != 1 || l.SentRate != 2000 || l.OpenedRate != 3 || l.DeniedRate != 0 {
		t.Errorf("client-1: %+v", l)
	}
	if l := loads["demo/server-1"]; l.Open != 1 || l.RecvRate != 50 || l.OpenedRate != 0.5 || l.DeniedRate != 2 {
		t.Errorf("server-1: %+v", l)
	}
	var b bytes.Buffer
	renderTop(&b, s, "node-1", 1)
	got := b.String()
	want := `nodeproxy top  node-1  04:00:02  every 2.0s  2 connections

WORKLOAD       OPEN  SENT/s  RECV/s  NEW/s  DENIED/s
demo/client-1  1     2.0KB   1000B   3.0    0.0
demo/server-1  1     150B    50B     0.5    2.0

ID  DIR       SRC                             DST                            TRANSPORT  AGE   SENT/s  RECV/s
1   outbound  demo/client-1 (10.1.1.2:40000)  demo/server-2 (10.1.2.3:8080)  hbone-h2   1m2s  2.0KB   1000B
… 1 more
`
	if got != want {
		t.Errorf("rendered:\n%s\nwant:\n%s", got, want)
	}
}

// TestTopAgainstAdmin reads a real admin server (admin.NewHandler on a
// loopback listener) and metrics handler.
func TestTopAgainstAdmin(t *testing.T) {
	src := &fakeSource{}
	src.conns = []admin.Connection{{ID: 7, Direction: admin.DirectionInbound, DstWorkload: "demo/server-1", SrcWorkload: "demo/client-1", Transport: admin.TransportHBONEH2, Started: time.Now(), BytesSent: 100}}
	ln, err := admin.ListenAdmin("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m := admin.NewMetrics("test")
	stats := m.ConnOpened(admin.Labels{Direction: admin.DirectionInbound, DestinationWorkload: "server-1", DestinationNamespace: "demo"})
	srv := &http.Server{Handler: admin.NewHandler(src)}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	mln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	msrv := &http.Server{Handler: m.Handler()}
	go msrv.Serve(mln)
	t.Cleanup(func() { msrv.Close() })
	murl := "http://" + mln.Addr().String() + "/metrics"

	r0, err := readTop(context.Background(), ln.Addr().String(), murl)
	if err != nil {
		t.Fatal(err)
	}
	src.conns[0].BytesSent = 5100
	stats.Close()
	m.ConnOpened(admin.Labels{Direction: admin.DirectionInbound, DestinationWorkload: "server-1", DestinationNamespace: "demo"})
	r1, err := readTop(context.Background(), ln.Addr().String(), murl)
	if err != nil {
		t.Fatal(err)
	}
	r1.At = r0.At.Add(time.Second)
	s := computeTop(r0, r1)
	if len(s.Conns) != 1 || s.Conns[0].SentRate != 5000 || len(s.Loads) != 1 || s.Loads[0].Workload != "demo/server-1" || s.Loads[0].OpenedRate != 1 {
		t.Fatalf("sample: %+v", s)
	}
	t.Logf("one connection at %.0f B/s, %s opened %.0f/s", s.Conns[0].SentRate, s.Loads[0].Workload, s.Loads[0].OpenedRate)

	// -o json: one sample, through the command.
	var out, errb bytes.Buffer
	if code := runTop([]string{"-o", "json", "--interval", "100ms", "--admin", ln.Addr().String(), "--metrics", murl}, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	var js TopSample
	if err := json.Unmarshal(out.Bytes(), &js); err != nil || len(js.Conns) != 1 || js.Conns[0].ID != 7 {
		t.Fatalf("-o json: %v %s", err, out.String())
	}
	// A table refresh.
	out.Reset()
	if code := runTop([]string{"-n", "1", "--interval", "50ms", "--admin", ln.Addr().String(), "--metrics", murl}, &out, &errb); code != 0 || !strings.Contains(out.String(), "demo/server-1") {
		t.Fatalf("table: exit %d: %q %s", code, out.String(), errb.String())
	}
}

type fakeSource struct{ conns []admin.Connection }

func (f *fakeSource) ConfigDump() admin.ConfigDump { return admin.ConfigDump{} }
func (f *fakeSource) Workloads() []admin.Workload  { return nil }
func (f *fakeSource) Services() []admin.Service    { return nil }
func (f *fakeSource) Policies() []admin.Policy     { return nil }
func (f *fakeSource) Certs() []admin.Cert          { return nil }
func (f *fakeSource) Connections() []admin.Connection {
	return append([]admin.Connection(nil), f.conns...)
}
func (f *fakeSource) Redirect() ([]admin.CapturedPod, error) { return nil, nil }
func (f *fakeSource) Ready() (bool, []string)                { return true, nil }
