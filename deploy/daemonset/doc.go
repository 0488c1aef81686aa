// Package daemonset holds no code: this directory is Ambit's Kubernetes
// install (`kubectl apply -k deploy/daemonset`), and its tests render it
// with kustomize, check what users check (no privileged containers, the node
// proxy's capabilities, the rollout, probes, RBAC without wildcards) and
// apply it to a real kube-apiserver (internal/kubetest).
package daemonset
