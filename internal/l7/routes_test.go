package l7

import (
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/ambit-mesh/ambit/internal/testutil"
)

const webRoute = `
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: demo}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /old}}]
    filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplaceFullPath, replaceFullPath: /new}, statusCode: 301}}]
  - matches: [{path: {type: PathPrefix, value: /split}}]
    backendRefs: [{name: web, port: 80, weight: 90}, {name: canary, port: 80, weight: 10}]
  - matches: [{headers: [{name: x-canary, value: "yes"}]}]
    filters:
    - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-routed, value: canary}]}}
    - {type: ResponseHeaderModifier, responseHeaderModifier: {add: [{name: x-via, value: waypoint}]}}
    - {type: RequestMirror, requestMirror: {backendRef: {name: web, port: 80}}}
    backendRefs: [{name: canary, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /api}}]
    backendRefs: [{name: web, port: 80}]
`

// Gateway API routes through the Routes adapter: redirect, weighted split,
// header match with request/response header filters and a mirror that
// does not answer the client, 404 when routes attach but none matches.
func TestRoutes(t *testing.T) {
	e := newEnv(t, webRoute, Options{Router: NewRoutes()})
	var webHits, mirrored atomic.Int32
	web := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		webHits.Add(1)
		if r.Header.Get("X-Canary") == "yes" {
			mirrored.Add(1)
		}
		w.Header().Set("X-Endpoint", "web")
	})
	e.backend(web1, web)
	e.backend(web2, web)
	e.backend(canary1, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Endpoint", "canary")
		w.Header().Set("X-Saw-Routed", r.Header.Get("X-Routed"))
	}))
	c := h1Client(e.front(webVIP), nil)
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

	res, _ := get(t, c, "http://web.demo/old/page")
	if res.StatusCode != 301 || res.Header.Get("Location") != "http://web.demo/new" {
		t.Errorf("redirect: %s Location %q", res.Status, res.Header.Get("Location"))
	}

	canary := 0
	const n = 1000
	for range n {
		res, _ := get(t, c, "http://web.demo/split")
		if res.Header.Get("X-Endpoint") == "canary" {
			canary++
		}
	}
	if canary < 70 || canary > 130 {
		t.Errorf("canary got %d of %d requests, want 10%% (70-130)", canary, n)
	}

	webBefore := webHits.Load()
	req, _ := http.NewRequest("GET", "http://web.demo/anything", nil)
	req.Header.Set("X-Canary", "yes")
	res, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.Header.Get("X-Endpoint") != "canary" || res.Header.Get("X-Saw-Routed") != "canary" || res.Header.Get("X-Via") != "waypoint" {
		t.Errorf("header route: %v", res.Header)
	}
	testutil.WaitFor(t, "the mirrored request", func() bool { return mirrored.Load() == 1 })
	if webHits.Load() != webBefore+1 {
		t.Errorf("web got %d requests during the mirrored one, want 1 (the mirror)", webHits.Load()-webBefore)
	}

	res, body := get(t, c, "http://web.demo/nothing")
	if res.StatusCode != 404 || res.Header.Get(HeaderError) != ReasonNoRouteMatch || !strings.Contains(body, "no route of demo/web matches GET /nothing") {
		t.Errorf("no match: %s %q", res.Status, body)
	}
	// The observer names the rule.
	found := false
	for _, ri := range e.obs.all() {
		found = found || strings.HasPrefix(ri.Route, "HTTPRoute demo/web rule 1")
	}
	if !found {
		t.Errorf("no observed request names HTTPRoute demo/web rule 1")
	}
}
