package console

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	pb "github.com/ambit-mesh/ambit/api/v1alpha1"
)

// ConfigDump is the part of the controller's admin /config_dump the console
// reads.
type ConfigDump struct {
	Version     string            `json:"version"`
	TrustDomain string            `json:"trustDomain"`
	Counts      map[string]int    `json:"counts"`
	Rejected    *Rejection        `json:"rejected,omitempty"`
	SourceError string            `json:"sourceError,omitempty"`
	Resources   []json.RawMessage `json:"resources"`
}

// Rejection is a configuration the controller refused (the last good one
// stayed in force).
type Rejection struct {
	Version string    `json:"version"`
	Reason  string    `json:"reason"`
	At      time.Time `json:"at"`
}

// Proxy is one entry of the controller's admin /debug/proxies.
type Proxy struct {
	Node          string    `json:"node"`
	Kind          string    `json:"kind"`
	Name          string    `json:"name,omitempty"`
	Build         string    `json:"build,omitempty"`
	Peer          string    `json:"peer"`
	ConnectedAt   time.Time `json:"connectedAt"`
	AckedVersion  string    `json:"ackedVersion"`
	LastNack      *Nack     `json:"lastNack,omitempty"`
	UpToDate      bool      `json:"upToDate"`
	LatestVersion string    `json:"latestVersion"`
}

// Nack is a configuration a proxy refused.
type Nack struct {
	Version string    `json:"version"`
	Reason  string    `json:"reason"`
	At      time.Time `json:"at"`
}

// Workload is a workload as the console shows it.
type Workload struct {
	Namespace      string            `json:"namespace"`
	Name           string            `json:"name"`
	ServiceAccount string            `json:"serviceAccount"`
	Identity       string            `json:"identity"`
	Node           string            `json:"node"`
	IPs            []string          `json:"ips"`
	Labels         map[string]string `json:"labels"`
	Ready          bool              `json:"ready"`
}

// Key is "namespace/name".
func (w Workload) Key() string { return w.Namespace + "/" + w.Name }

// Service is a service as the console shows it.
type Service struct {
	Namespace string            `json:"namespace"`
	Name      string            `json:"name"`
	Selector  map[string]string `json:"selector"`
	Waypoint  string            `json:"waypoint,omitempty"`
	Addresses []string          `json:"addresses"`
	Endpoints []string          `json:"endpoints"`
}

// Policy is an AccessPolicy as the console shows it.
type Policy struct {
	Namespace string            `json:"namespace"`
	Name      string            `json:"name"`
	Action    string            `json:"action"`
	DryRun    bool              `json:"dryRun,omitempty"`
	Selector  map[string]string `json:"selector"`
	// ExternalBackends, when set, are what the policy applies to instead
	// of workloads (its targetRefs).
	ExternalBackends []string `json:"externalBackends,omitempty"`
	Rules            int      `json:"rules"`
	L7               bool     `json:"l7,omitempty"`
}

// Inventory is the configuration in force, as far as the console needs it.
type Inventory struct {
	Version     string
	TrustDomain string
	Workloads   []Workload
	Services    []Service
	Policies    []Policy
	Waypoints   []string // "namespace/name"
	Kinds       map[string]int
}

// ParseInventory reads the resources of a config dump.
func ParseInventory(d ConfigDump) (*Inventory, error) {
	inv := &Inventory{Version: d.Version, TrustDomain: d.TrustDomain, Kinds: map[string]int{}}
	opts := protojson.UnmarshalOptions{DiscardUnknown: true}
	for i, raw := range d.Resources {
		var r pb.Resource
		if err := opts.Unmarshal(raw, &r); err != nil {
			return nil, fmt.Errorf("config dump resource %d: %w", i, err)
		}
		switch k := r.Kind.(type) {
		case *pb.Resource_Workload:
			w := k.Workload
			inv.Kinds["Workload"]++
			x := Workload{Namespace: w.Namespace, Name: w.Name, ServiceAccount: w.ServiceAccount, Node: w.Node, Labels: w.Labels, Ready: w.Ready}
			if inv.TrustDomain != "" && w.ServiceAccount != "" {
				x.Identity = fmt.Sprintf("spiffe://%s/ns/%s/sa/%s", inv.TrustDomain, w.Namespace, w.ServiceAccount)
			}
			for _, a := range w.Addresses {
				if ip, ok := netip.AddrFromSlice(a); ok {
					x.IPs = append(x.IPs, ip.Unmap().String())
				}
			}
			inv.Workloads = append(inv.Workloads, x)
		case *pb.Resource_Service:
			s := k.Service
			inv.Kinds["Service"]++
			x := Service{Namespace: s.Namespace, Name: s.Name, Selector: s.Selector, Waypoint: s.Waypoint, Endpoints: s.Endpoints}
			for _, a := range s.Addresses {
				if ip, ok := netip.AddrFromSlice(a); ok {
					x.Addresses = append(x.Addresses, ip.Unmap().String())
				}
			}
			inv.Services = append(inv.Services, x)
		case *pb.Resource_AccessPolicy:
			p := k.AccessPolicy
			inv.Kinds["AccessPolicy"]++
			x := Policy{Namespace: p.Namespace, Name: p.Name, Action: strings.TrimPrefix(p.Action.String(), "POLICY_ACTION_"), DryRun: p.DryRun, Selector: p.Selector, ExternalBackends: p.ExternalBackends, Rules: len(p.Rules)}
			for _, r := range p.Rules {
				x.L7 = x.L7 || r.L7
			}
			inv.Policies = append(inv.Policies, x)
		case *pb.Resource_Waypoint:
			inv.Kinds["Waypoint"]++
			inv.Waypoints = append(inv.Waypoints, k.Waypoint.Namespace+"/"+k.Waypoint.Name)
		case *pb.Resource_TrafficPolicy:
			inv.Kinds["TrafficPolicy"]++
		case *pb.Resource_HttpRoute:
			inv.Kinds["HTTPRoute"]++
		case *pb.Resource_GrpcRoute:
			inv.Kinds["GRPCRoute"]++
		case *pb.Resource_Namespace:
			inv.Kinds["Namespace"]++
		}
	}
	sort.Slice(inv.Workloads, func(i, j int) bool { return inv.Workloads[i].Key() < inv.Workloads[j].Key() })
	sort.Slice(inv.Services, func(i, j int) bool {
		return inv.Services[i].Namespace+"/"+inv.Services[i].Name < inv.Services[j].Namespace+"/"+inv.Services[j].Name
	})
	return inv, nil
}

// workload finds a workload by namespace and name.
func (inv *Inventory) workload(ns, name string) (Workload, bool) {
	for _, w := range inv.Workloads {
		if w.Namespace == ns && w.Name == name {
			return w, true
		}
	}
	return Workload{}, false
}

// byIdentity lists the workloads that run as identity.
func (inv *Inventory) byIdentity(id string) []Workload {
	var out []Workload
	for _, w := range inv.Workloads {
		if w.Identity == id {
			out = append(out, w)
		}
	}
	return out
}

func (inv *Inventory) service(ns, name string) (Service, bool) {
	for _, s := range inv.Services {
		if s.Namespace == ns && s.Name == name {
			return s, true
		}
	}
	return Service{}, false
}

// PoliciesFor lists the AccessPolicies whose selector matches w (in its
// namespace; an empty selector selects the whole namespace; a policy with
// targetRefs selects no workload).
func (inv *Inventory) PoliciesFor(w Workload) []Policy {
	var out []Policy
	for _, p := range inv.Policies {
		if p.Namespace != w.Namespace || len(p.ExternalBackends) > 0 {
			continue
		}
		ok := true
		for k, v := range p.Selector {
			if w.Labels[k] != v {
				ok = false
				break
			}
		}
		if ok {
			out = append(out, p)
		}
	}
	return out
}

// nsSA splits a SPIFFE ID spiffe://td/ns/N/sa/S into N and S.
func nsSA(id string) (ns, sa string, ok bool) {
	rest, found := strings.CutPrefix(id, "spiffe://")
	if !found {
		return "", "", false
	}
	parts := strings.Split(rest, "/")
	if len(parts) != 5 || parts[1] != "ns" || parts[3] != "sa" {
		return "", "", false
	}
	return parts[2], parts[4], true
}
