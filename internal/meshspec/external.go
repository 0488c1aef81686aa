package meshspec

import (
	"fmt"
	"net/netip"

	crd "github.com/ambit-mesh/ambit/api/crd/v1alpha1"
	"github.com/ambit-mesh/ambit/internal/meshconfig"
)

// The egress resources into the model: ExternalBackend (ambit.dev) and
// the ConfigMaps holding the CA bundles its TLS validation names.

type externalBackendDoc struct {
	header   `yaml:",inline"`
	Metadata meta                    `yaml:"metadata" json:"metadata"`
	Spec     crd.ExternalBackendSpec `yaml:"spec" json:"spec"`
}

type configMapDoc struct {
	header   `yaml:",inline"`
	Metadata meta              `yaml:"metadata"`
	Data     map[string]string `yaml:"data"`
}

// ExternalBackendFromSpec converts an ExternalBackend's spec into the
// model, with the CRD's defaults applied, or says what is wrong with it.
// Its CA references are resolved by the Builder.
func ExternalBackendFromSpec(namespace, name string, spec crd.ExternalBackendSpec) (meshconfig.ExternalBackend, error) {
	x := meshconfig.ExternalBackend{Namespace: namespace, Name: name, Hostname: spec.Hostname, Resolution: spec.Resolution}
	if err := meshconfig.CheckMeta(meshconfig.KindExternalBackend, name, namespace); err != nil {
		return x, fieldErr("metadata", "%v", err)
	}
	for i, p := range spec.Ports {
		if p.Port < 1 || p.Port > 65535 {
			return x, fieldErr(fmt.Sprintf("spec.ports[%d].port", i), "ExternalBackend %s: spec.ports[%d].port %d is out of range 1-65535", x.Key(), i, p.Port)
		}
		x.Ports = append(x.Ports, meshconfig.ExternalPort{Name: p.Name, Port: uint16(p.Port), Protocol: p.Protocol})
	}
	for i, a := range spec.Addresses {
		ip, err := netip.ParseAddr(string(a))
		if err != nil {
			return x, fieldErr("spec.addresses", "ExternalBackend %s: spec.addresses[%d] %q is not an IP address", x.Key(), i, a)
		}
		x.Addresses = append(x.Addresses, ip)
	}
	if t := spec.TLS; t != nil {
		v := t.Validation
		x.TLS.ServerName = v.Hostname
		switch v.WellKnownCACertificates {
		case "":
		case "System":
			x.TLS.System = true
		default:
			return x, fieldErr("spec.tls.validation.wellKnownCACertificates", "ExternalBackend %s: wellKnownCACertificates %q; the one Ambit knows is System", x.Key(), v.WellKnownCACertificates)
		}
		for i, r := range v.CACertificateRefs {
			f := fmt.Sprintf("spec.tls.validation.caCertificateRefs[%d]", i)
			if (r.Group != "" || r.Kind != "ConfigMap") && !(r.Group == "" && r.Kind == "") {
				return x, fieldErr(f, "ExternalBackend %s: %s names a %s (group %q); CA certificates are read from ConfigMaps (group \"\", kind ConfigMap, key %s)", x.Key(), f, r.Kind, r.Group, meshconfig.CABundleKey)
			}
			if r.Name == "" {
				return x, fieldErr(f+".name", "ExternalBackend %s: %s.name is empty; name the ConfigMap", x.Key(), f)
			}
			x.TLS.CACertificateRefs = append(x.TLS.CACertificateRefs, namespace+"/"+r.Name)
		}
	}
	return x, nil
}

// CABundleFrom is a ConfigMap's CA bundle (its ca.crt; empty when it has
// none, which an ExternalBackend naming it reports).
func CABundleFrom(namespace, name string, data map[string]string) meshconfig.CABundle {
	return meshconfig.CABundle{Namespace: namespace, Name: name, PEM: []byte(data[meshconfig.CABundleKey])}
}
