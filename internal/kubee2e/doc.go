// Package kubee2e proves the mesh on a real Kubernetes cluster: the local
// two-node cluster of internal/kubecluster (real kubelet, containerd, runc,
// CNI, kube-proxy, CoreDNS), Ambit installed with `kubectl apply -k` of
// its profiles from the images `make images` builds, and applications
// enrolled, policed, routed through a waypoint, upgraded and uninstalled
// the way a platform engineer would, checked from the outside (kubectl,
// the node proxies' debug CLI and logs, a capture on the link between the
// nodes, the pods' own network namespaces). Its only code is its test.
package kubee2e
