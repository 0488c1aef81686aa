// Package profiles holds no code: its directories are Ambit's Kubernetes
// install profiles (`kubectl apply -k deploy/profiles/<name>`: minimal,
// default, demo), composed from deploy/base and deploy/samples, and its
// tests render them with kustomize, check what users check (what each
// profile installs, no privileged containers, the node proxy's
// capabilities, the rollout, probes, RBAC without wildcards) and apply the
// default profile to a real kube-apiserver (internal/kubetest).
package profiles
