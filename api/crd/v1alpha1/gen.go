package v1alpha1

// The CRDs and the deep-copy functions are generated; `make crds` runs this.
//go:generate go tool controller-gen object paths=. crd:crdVersions=v1 output:crd:artifacts:config=../../../deploy/base/control-plane/crds
