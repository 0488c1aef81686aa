package authz

import (
	crd "github.com/ambit-mesh/ambit/api/crd/v1alpha1"
	"github.com/ambit-mesh/ambit/internal/meshspec"
)

// FromSpec (tests) builds the waypoint's policy from an AccessPolicy resource's
// spec, with every HTTP attribute of every "to" entry. It accepts and
// refuses exactly what meshspec.AccessPolicyFromSpec does (same
// validation, same messages); method, path and host values are taken as
// written (a pattern that cannot match a request simply never matches).
func FromSpec(namespace, name string, spec crd.AccessPolicySpec) (Policy, error) {
	l4, err := meshspec.AccessPolicyFromSpec(namespace, name, spec)
	if err != nil {
		return Policy{}, err
	}
	p := Policy{Namespace: namespace, Name: name, Selector: l4.Selector, Action: l4.Action, DryRun: l4.DryRun, CaseInsensitivePaths: l4.CaseInsensitivePaths}
	for i, r := range spec.Rules {
		rule := Rule{From: l4.Rules[i].From}
		for j, t := range r.To {
			tg := Target{Methods: t.Methods, Paths: t.Paths, Hosts: t.Hosts}
			for _, port := range t.Ports {
				tg.Ports = append(tg.Ports, uint16(port)) // 1-65535, checked above
			}
			if l4.Rules[i].L7 {
				tg.Headers = l4.Rules[i].To[j].Headers // read and checked above
			}
			rule.To = append(rule.To, tg)
		}
		p.Rules = append(p.Rules, rule)
	}
	return p, nil
}
