// Command meshecho is the test application of the Gateway API's MESH
// conformance tests, written for Ambit. The suite deploys it under the name
// registry.k8s.io/gateway-api/echo-advanced (upstream, Istio's echo app) and
// drives it in two ways:
//
//   - as the pods' server: `meshecho --port=8080 --tcp=9090 --grpc=7070
//     --port=8443 --tls=8443 --crt=FILE --key=FILE` (no ports: HTTP on 8080,
//     gRPC on 7070, as upstream). Every HTTP request is
//     answered with the request as it arrived, one `Field=value` line each
//     (ServicePort, Host, URL, Method, Proto, IP, RequestHeader=Name:value,
//     Hostname, ...); TCP ports echo what they read; gRPC ports answer the
//     unary method Echo of this program's client with the same lines.
//   - as the client the suite runs with `kubectl exec POD -- client URL
//     [--method=M] [-H Name:value]... [--count=N]`: it sends the request(s)
//     from inside the pod (so through the mesh), never following redirects,
//     and prints each answer as `[i] StatusCode=...`, `[i]
//     ResponseHeader=Name:value` and `[i body] LINE` lines, answers separated
//     by a blank line. That is the text the suite parses
//     (sigs.k8s.io/gateway-api/conformance/utils/echo).
//
// The image holds this binary as /client, so both uses are one program: a
// first argument that is not a flag is the client's URL.
package main

import (
	"fmt"
	"os"
	"strings"
)

func main() {
	args := os.Args[1:]
	var err error
	if len(args) > 0 && args[0] == "client" {
		args = args[1:]
	}
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		err = runClient(os.Stdout, args)
	} else {
		err = runServer(args)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "meshecho:", err)
		os.Exit(1)
	}
}
