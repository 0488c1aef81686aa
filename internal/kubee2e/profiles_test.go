package kubee2e

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// checkDemoProfile: `kubectl apply -k deploy/profiles/demo` over the
// default install leaves the install as it is and adds the store sample,
// whose frontend answers through the mesh: it calls the catalog through
// the catalog's waypoint, which sends "x-canary: true" to v2 and splits the
// rest 90/10, and the sample's AccessPolicy refuses /admin/; from outside
// the mesh it answers through the sample's ingress Gateway.
func checkDemoProfile(e *env) {
	t := e.t
	generations := func() string {
		return e.kubectl("-n", "ambit-system", "get", "deployment/ambit-controller", "daemonset/ambit-nodeproxy",
			"-o", "jsonpath={range .items[*]}{.metadata.name}={.metadata.generation} {end}")
	}
	before := generations()
	start := time.Now()
	e.kubectl("apply", "-k", e.profile("demo"))
	defer e.kubectl("delete", "namespace", "ambit-demo", "--wait=true", "--timeout=3m")
	if after := generations(); after != before {
		t.Errorf("applying profile demo over default changed the install: %s -> %s", before, after)
	}
	e.waitFor(time.Minute, "the controller makes the demo's waypoint", func() (bool, string) {
		out, err := e.try("-n", "ambit-demo", "get", "deployment", "waypoint")
		return err == nil, out
	})
	for _, d := range []string{"frontend", "catalog-v1", "catalog-v2", "waypoint"} {
		e.kubectl("-n", "ambit-demo", "rollout", "status", "deployment/"+d, "--timeout=3m")
	}
	front := e.waitPods("ambit-demo", "app=frontend", 1, 3*time.Minute)[0]
	const frontend, catalog = "http://frontend.ambit-demo.svc.cluster.local/", "http://catalog.ambit-demo.svc.cluster.local/"
	// The frontend answers 200 only when its call to the catalog did.
	e.waitFor(time.Minute, "the demo's frontend answers, its catalog call included", func() (bool, string) {
		r := e.echoGet("ambit-demo", front.Name, "-n", "5", frontend)
		return r.Bodies["frontend"] == 5, strings.TrimSpace(e.kubectl("-n", "ambit-demo", "get", "pods", "-o", "wide"))
	})
	t.Logf("profile demo: store sample answering through the mesh %v after `kubectl apply -k deploy/profiles/demo`", time.Since(start).Round(time.Second))

	// Routed by the waypoint: the canary header to v2 only, the rest split.
	if r := e.echoGet("ambit-demo", front.Name, "-n", "20", "-H", "x-canary: true", catalog); r.Bodies["catalog-v2"] != 20 {
		t.Errorf("20 requests with x-canary: true: %+v; want all from catalog-v2", r)
	}
	r := e.echoGet("ambit-demo", front.Name, "-n", "300", "-c", "4", catalog)
	v1, v2 := r.Bodies["catalog-v1"], r.Bodies["catalog-v2"]
	t.Logf("demo catalog split over 300 requests: v1 %d, v2 %d (route 90/10)", v1, v2)
	// 10% of 300 is 30, standard deviation about 5.2: within ±21 (4 sd).
	if v1+v2 != 300 || v2 < 9 || v2 > 51 {
		t.Errorf("catalog split v1 %d, v2 %d of 300 (%+v); want all answered and v2 within 30±21", v1, v2, r)
	}
	if r := e.echoGet("ambit-demo", front.Name, "-n", "1", catalog+"admin/users"); r.Statuses["403"] != 1 {
		t.Errorf("GET /admin/users on the catalog: %+v; want 403 from the sample's AccessPolicy", r)
	}

	// From outside the mesh (a node's network) through the store's
	// ingress Gateway to the frontend.
	e.waitFor(2*time.Minute, "the controller makes the store's gateway", func() (bool, string) {
		out, err := e.try("-n", "ambit-demo", "get", "deployment", "store")
		return err == nil, out
	})
	e.kubectl("-n", "ambit-demo", "rollout", "status", "deployment/store", "--timeout=3m")
	gws := e.waitPods("ambit-demo", "ambit.dev/gateway=store", 1, time.Minute)
	addr := forwardFromNode(t, e.node(gws[0].Spec.NodeName).NetNS, net.JoinHostPort(gws[0].Status.PodIP, "80"))
	hc := &http.Client{Timeout: 5 * time.Second}
	e.waitFor(time.Minute, "the store answers through its ingress Gateway", func() (bool, string) {
		res, err := hc.Get("http://" + addr + "/")
		if err != nil {
			return false, err.Error()
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode == 200 && strings.HasPrefix(strings.TrimSpace(string(b)), "frontend"), fmt.Sprintf("%d %s", res.StatusCode, b)
	})
	e.waitFor(time.Minute, "the store's Gateway Programmed", func() (bool, string) {
		out, err := e.try("-n", "ambit-demo", "get", "gateway", "store", "-o", `jsonpath={.status.conditions[?(@.type=="Programmed")].status}`)
		return err == nil && strings.TrimSpace(out) == "True", out
	})
}
