package kubee2e

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// pathNormApp: ambit-echo behind the namespace's waypoint (it answers with
// X-Echo-Uri, the target it received) and an AccessPolicy CRD that DENYs
// /admin and /admin/* without case (caseInsensitivePaths).
const pathNormApp = `apiVersion: v1
kind: Pod
metadata: {name: pathnorm, namespace: shop, labels: {app: pathnorm}}
spec:
  serviceAccountName: server
  containers:
  - name: echo
    image: ghcr.io/ambit-mesh/ambit-echo:TAG
    imagePullPolicy: Never
    args: [http, -name, pathnorm, ":8080"]
    readinessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 2}
---
apiVersion: v1
kind: Service
metadata: {name: pathnorm, namespace: shop, labels: {ambit.dev/use-waypoint: waypoint}}
spec:
  selector: {app: pathnorm}
  ports: [{name: http, port: 80, targetPort: 8080, appProtocol: http}]
---
apiVersion: ambit.dev/v1alpha1
kind: AccessPolicy
metadata: {name: pathnorm-no-admin, namespace: shop}
spec:
  selector: {matchLabels: {app: pathnorm}}
  action: DENY
  caseInsensitivePaths: true
  rules:
  - to: [{paths: ["/admin", "/admin/*"]}]
`

// checkPathNormalization (issue 17 item 9) on the real cluster: through
// the namespace's waypoint, at the default level (DECODE_AND_MERGE_SLASHES:
// Kubernetes has no MeshConfig knob), request targets sent raw from the
// client pod that spell /admin another way (%2F, //, ;x, and upper case
// against the caseInsensitivePaths policy) are 403 naming the policy; a
// %00 is 400 (x-ambit-error: invalid-path, no DENY in the waypoint's
// access log); the backend receives the normalized path.
func checkPathNormalization(e *env, client corev1.Pod) {
	t := e.t
	e.apply(strings.ReplaceAll(pathNormApp, "TAG", e.tag))
	defer func() {
		e.try("-n", "shop", "delete", "accesspolicy", "pathnorm-no-admin", "--ignore-not-found")
		e.try("-n", "shop", "delete", "service", "pathnorm", "--ignore-not-found")
		e.try("-n", "shop", "delete", "pod", "pathnorm", "--ignore-not-found", "--wait=true", "--timeout=90s")
	}()
	e.waitPods("shop", "app=pathnorm", 1, 2*time.Minute)
	if out, err := e.try("get", "crd", "accesspolicies.ambit.dev", "-o", "jsonpath={..properties.caseInsensitivePaths.type}"); err != nil || !strings.Contains(out, "boolean") {
		t.Errorf("the AccessPolicy CRD has no caseInsensitivePaths field: %q %v", out, err)
	}
	svc, err := e.c.Client().CoreV1().Services("shop").Get(e.ctx, "pathnorm", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	vip := svc.Spec.ClusterIP + ":80"
	base := "http://" + vip
	var pub, adm getReport
	took := e.waitFor(time.Minute, "through the waypoint, /public is answered by the backend and /admin is denied", func() (bool, string) {
		pub, adm = e.get(client.Name, base+"/public"), e.get(client.Name, base+"/admin")
		return pub.Bodies["pathnorm"] == 1 && adm.Statuses["403"] == 1, fmt.Sprintf("/public %+v; /admin %+v", pub, adm)
	})
	t.Logf("path normalization: /public answered by the backend, /admin %v (ready %v after apply)", adm.Statuses, took.Round(10*time.Millisecond))

	const denied = "RBAC: access denied by AccessPolicy shop/pathnorm-no-admin"
	for _, c := range []struct {
		target string
		code   int
		reason string // x-ambit-error
		uri    string // for 200: the target the backend received
	}{
		{"/admin%2Fx", 403, "access-denied", ""},
		{"//admin", 403, "access-denied", ""},
		{"/admin;x", 403, "access-denied", ""},
		{"/ADMIN", 403, "access-denied", ""},
		{"/Admin/x", 403, "access-denied", ""},
		{"/public/%00", 400, "invalid-path", ""},
		{"/public/./a//b%2fc", 200, "", "/public/a/b/c"},
	} {
		reply, ended := e.rawInPod(client, vip, "GET "+c.target+" HTTP/1.1\r\nHost: pathnorm\r\nConnection: close\r\n\r\n")
		res, err := http.ReadResponse(bufio.NewReader(strings.NewReader(reply)), nil)
		if err != nil {
			t.Errorf("GET %s: no HTTP answer (%v; read ended: %s):\n%s", c.target, err, ended, reply)
			continue
		}
		b, _ := io.ReadAll(res.Body)
		body := strings.TrimSpace(string(b))
		reason, uri := res.Header.Get("X-Ambit-Error"), res.Header.Get("X-Echo-Uri")
		t.Logf("path normalization: GET %-20s -> %d %q x-ambit-error=%q x-echo-uri=%q", c.target, res.StatusCode, body, reason, uri)
		switch {
		case res.StatusCode != c.code || reason != c.reason:
			t.Errorf("GET %s: %d x-ambit-error=%q %q; want %d %q", c.target, res.StatusCode, reason, body, c.code, c.reason)
		case c.code == 403 && body != denied:
			t.Errorf("GET %s: 403 %q; want %q", c.target, body, denied)
		case c.code == 400 && !strings.Contains(body, "invalid request path"):
			t.Errorf("GET %s: 400 %q; want the reason (invalid request path)", c.target, body)
		case c.code == 200 && uri != c.uri:
			t.Errorf("GET %s: the backend received %q; want %q", c.target, uri, c.uri)
		}
	}

	// The waypoint's access log: the 400 is no policy denial, the 403s are.
	wps := e.pods("shop", "ambit.dev/waypoint=waypoint")
	if len(wps) == 0 {
		t.Fatal("no waypoint pod")
	}
	var bad, denials []string
	e.waitFor(30*time.Second, "the waypoint's access log has the 400 and the 403s of the policy", func() (bool, string) {
		log, _ := e.try("-n", "shop", "logs", wps[0].Name)
		bad, denials = nil, nil
		for _, line := range strings.Split(log, "\n") {
			switch {
			case accessCode(line, 400):
				bad = append(bad, line)
			case accessCode(line, 403) && strings.Contains(line, "shop/pathnorm-no-admin"):
				denials = append(denials, line)
			}
		}
		return len(bad) > 0 && len(denials) >= 5, tail([]byte(log), 2000)
	})
	for _, l := range bad {
		if strings.Contains(l, "DENY") {
			t.Errorf("the waypoint's access log counts the 400 as a denial: %s", l)
		}
	}
	for _, l := range denials {
		if !strings.Contains(l, "DENY") {
			t.Errorf("the waypoint's access log has a policy's 403 without the DENY flag: %s", l)
		}
	}
	if len(bad) > 0 {
		t.Logf("path normalization: waypoint access log for the 400: %s", bad[len(bad)-1])
	}
}

// accessCode reports whether line is an access log line (text or JSON)
// with HTTP status code.
func accessCode(line string, code int) bool {
	if !strings.Contains(line, "log=access") && !strings.Contains(line, `"log":"access"`) {
		return false
	}
	return strings.Contains(line, fmt.Sprintf(" code=%d ", code)) || strings.Contains(line, fmt.Sprintf(`"code":%d,`, code))
}
