package bench

import "github.com/ambit-mesh/ambit/internal/lab"

// The bench lab: the same five pods in every lab the harness builds, so
// every mode has the same addresses. Clients are on node-1, servers on
// node-2; namespace bench is enrolled, namespace plain is not. The fifth,
// plain/proxy on node-1, holds nginx-http's reverse proxy.
const (
	NodeClient = "node-1"
	NodeServer = "node-2"

	NamespaceMesh  = "bench"
	NamespacePlain = "plain"

	PodClient = "client"
	PodServer = "server"
	// PodProxy is the pod on the client's node that nginx-http's HTTP
	// reverse proxy runs in: a proxy pod like the waypoint's, so both
	// middle hops cross the same pod network.
	PodProxy = "proxy"
)

// Topology is the bench lab with tunnel as the mesh's tunnel protocol
// (lab.TunnelH2 or lab.TunnelQUIC).
func Topology(tunnel string) *lab.Topology {
	pod := func(ns, name, node string) lab.Pod {
		return lab.Pod{Name: name, Namespace: ns, Node: node, ServiceAccount: name, Labels: map[string]string{"app": name}}
	}
	return &lab.Topology{
		TrustDomain: lab.DefaultTrustDomain,
		Nodes:       []lab.Node{{Name: NodeClient}, {Name: NodeServer}},
		Namespaces: []lab.Namespace{
			{Name: NamespaceMesh, Labels: map[string]string{lab.DataplaneLabel: lab.DataplaneAmbient}},
			{Name: NamespacePlain},
		},
		Pods: []lab.Pod{
			pod(NamespaceMesh, PodClient, NodeClient),
			pod(NamespaceMesh, PodServer, NodeServer),
			pod(NamespacePlain, PodClient, NodeClient),
			pod(NamespacePlain, PodServer, NodeServer),
			pod(NamespacePlain, PodProxy, NodeClient),
		},
		Mesh: lab.Mesh{Tunnel: tunnel},
	}
}
