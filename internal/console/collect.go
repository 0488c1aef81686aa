package console

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Controller is where the console reads the configuration in force and
// the connected proxies: the controller's admin endpoint.
type Controller interface {
	ConfigDump(ctx context.Context) (ConfigDump, error)
	Proxies(ctx context.Context) ([]Proxy, error)
}

// AdminClient reads a controller's admin endpoint over HTTP.
type AdminClient struct {
	// Base is the admin's URL, e.g. http://127.0.0.1:15000.
	Base string
	// HTTP is the client (default: one with a 5 s timeout).
	HTTP *http.Client
}

// InProcess is an AdminClient that calls the controller's admin handler
// directly, with no listener: the console served by the controller itself.
func InProcess(adminHandler http.Handler) *AdminClient {
	return &AdminClient{Base: "http://localhost", HTTP: &http.Client{Transport: handlerTransport{adminHandler}}}
}

type handlerTransport struct{ h http.Handler }

func (t handlerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	rec := httptest.NewRecorder()
	t.h.ServeHTTP(rec, r)
	return rec.Result(), nil
}

func (a *AdminClient) get(ctx context.Context, path string, v any) error {
	c := a.HTTP
	if c == nil {
		c = &http.Client{Timeout: 5 * time.Second}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(a.Base, "/")+path, nil)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return fmt.Errorf("controller admin %s: %w (is the controller running, and --admin the address it serves its admin on?)", a.Base, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("controller admin %s%s: %w", a.Base, path, err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("controller admin %s%s: %s: %s", a.Base, path, resp.Status, strings.TrimSpace(string(body)))
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("controller admin %s%s: %w", a.Base, path, err)
	}
	return nil
}

// ConfigDump reads /config_dump.
func (a *AdminClient) ConfigDump(ctx context.Context) (ConfigDump, error) {
	var d ConfigDump
	err := a.get(ctx, "/config_dump", &d)
	return d, err
}

// Proxies reads /debug/proxies.
func (a *AdminClient) Proxies(ctx context.Context) ([]Proxy, error) {
	var p struct {
		Proxies []Proxy `json:"proxies"`
	}
	err := a.get(ctx, "/debug/proxies", &p)
	return p.Proxies, err
}

// Target is a proxy's metrics endpoint.
type Target struct {
	URL  string `json:"url"`
	Kind string `json:"kind"` // "nodeproxy" or "waypoint"
	Node string `json:"node"`
	Name string `json:"name,omitempty"`
}

// ProxyTargets derives the metrics URL of each connected proxy from the
// address it connected to the controller from, with port (15020).
func ProxyTargets(proxies []Proxy, port int) []Target {
	var out []Target
	seen := map[string]bool{}
	for _, p := range proxies {
		host, _, err := net.SplitHostPort(p.Peer)
		if err != nil || host == "" {
			continue
		}
		u := "http://" + net.JoinHostPort(host, strconv.Itoa(port)) + "/metrics"
		if seen[u] {
			continue
		}
		seen[u] = true
		out = append(out, Target{URL: u, Kind: p.Kind, Node: p.Node, Name: p.Name})
	}
	return out
}

// Metrics gives the samples at the end and the start of the window.
type Metrics interface {
	// Window returns the latest snapshot and the oldest one within the
	// window (nil when there is none yet), with errors of the sources
	// that did not answer.
	Window(ctx context.Context) (cur, prev *Snapshot, errs []string, err error)
	// Name says where the samples come from, for the page.
	Name() string
}

// Scraper reads the proxies' metrics endpoints itself, every Interval,
// and keeps the snapshots of the last Window.
type Scraper struct {
	Targets  func(ctx context.Context) ([]Target, error)
	HTTP     *http.Client
	Interval time.Duration
	Span     time.Duration
	Now      func() time.Time

	mu      sync.Mutex
	history []*Snapshot
	errs    []string
	kinds   map[string]string // instance -> kind
}

// Name implements Metrics.
func (s *Scraper) Name() string { return "proxies (scraped directly)" }

// Run scrapes until ctx ends.
func (s *Scraper) Run(ctx context.Context) {
	t := time.NewTicker(s.Interval)
	defer t.Stop()
	for {
		s.ScrapeOnce(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// ScrapeOnce reads every target now and records the snapshot.
func (s *Scraper) ScrapeOnce(ctx context.Context) {
	now := time.Now
	if s.Now != nil {
		now = s.Now
	}
	targets, err := s.Targets(ctx)
	var errs []string
	if err != nil {
		errs = append(errs, err.Error())
	}
	client := s.HTTP
	if client == nil {
		client = &http.Client{Timeout: 3 * time.Second}
	}
	snap := &Snapshot{At: now(), Instances: map[string]bool{}}
	kinds := map[string]string{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, t := range targets {
		kinds[t.URL] = t.Kind
		wg.Add(1)
		go func() {
			defer wg.Done()
			samples, err := scrape(ctx, client, t.URL)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, fmt.Sprintf("%s %s (%s): %v", t.Kind, t.Node, t.URL, err))
				return
			}
			snap.Samples = append(snap.Samples, samples...)
			snap.Instances[t.URL] = true
		}()
	}
	wg.Wait()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.history = append(s.history, snap)
	for len(s.history) > 2 && snap.At.Sub(s.history[1].At) >= s.Span {
		s.history = s.history[1:]
	}
	s.errs, s.kinds = errs, kinds
}

// Waypoints lists the instances that are waypoints.
func (s *Scraper) Waypoints() map[string]bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]bool{}
	for inst, k := range s.kinds {
		if k == "waypoint" {
			out[inst] = true
		}
	}
	return out
}

// Window implements Metrics.
func (s *Scraper) Window(ctx context.Context) (*Snapshot, *Snapshot, []string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.history) == 0 {
		return nil, nil, nil, errors.New("no metrics scraped yet")
	}
	cur := s.history[len(s.history)-1]
	var prev *Snapshot
	if len(s.history) > 1 {
		prev = s.history[0]
	}
	return cur, prev, s.errs, nil
}

func scrape(ctx context.Context, c *http.Client, u string) ([]Sample, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "text/plain;version=0.0.4")
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s", resp.Status)
	}
	return ParseText(io.LimitReader(resp.Body, 64<<20), u)
}

// Prometheus reads the same series from a Prometheus server's query API,
// at now and now minus Span.
type Prometheus struct {
	URL  string
	HTTP *http.Client
	Span time.Duration
	Now  func() time.Time
}

// Name implements Metrics.
func (p *Prometheus) Name() string { return "Prometheus at " + p.URL }

// promSelector selects every family the console reads.
const promSelector = `{__name__=~"ambit_tcp_connections_opened_total|ambit_tcp_connections_denied_total|ambit_tcp_sent_bytes_total|ambit_tcp_received_bytes_total|ambit_requests_total|ambit_request_duration_seconds_bucket|ambit_certificate_expiry_timestamp_seconds"}`

// Window implements Metrics.
func (p *Prometheus) Window(ctx context.Context) (*Snapshot, *Snapshot, []string, error) {
	now := time.Now
	if p.Now != nil {
		now = p.Now
	}
	t := now()
	cur, err := p.query(ctx, t)
	if err != nil {
		return nil, nil, nil, err
	}
	prev, err := p.query(ctx, t.Add(-p.Span))
	if err != nil {
		return cur, nil, []string{err.Error()}, nil
	}
	return cur, prev, nil, nil
}

func (p *Prometheus) query(ctx context.Context, at time.Time) (*Snapshot, error) {
	c := p.HTTP
	if c == nil {
		c = &http.Client{Timeout: 10 * time.Second}
	}
	q := url.Values{"query": {promSelector}, "time": {strconv.FormatFloat(float64(at.UnixMilli())/1000, 'f', 3, 64)}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(p.URL, "/")+"/api/v1/query?"+q.Encode(), nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, fmt.Errorf("prometheus %s: %w", p.URL, err)
	}
	defer resp.Body.Close()
	var body struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			ResultType string `json:"resultType"`
			Result     []struct {
				Metric map[string]string `json:"metric"`
				Value  [2]any            `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 256<<20)).Decode(&body); err != nil {
		return nil, fmt.Errorf("prometheus %s: %s: %w", p.URL, resp.Status, err)
	}
	if body.Status != "success" {
		return nil, fmt.Errorf("prometheus %s: %s", p.URL, body.Error)
	}
	snap := &Snapshot{At: at}
	for _, r := range body.Data.Result {
		str, _ := r.Value[1].(string)
		v, err := parseValue(str)
		if err != nil {
			continue
		}
		s := Sample{Name: r.Metric["__name__"], Instance: r.Metric["instance"], Labels: map[string]string{}, Value: v}
		for k, x := range r.Metric {
			if k != "__name__" && k != "instance" && k != "job" {
				s.Labels[k] = x
			}
		}
		snap.Samples = append(snap.Samples, s)
	}
	return snap, nil
}
