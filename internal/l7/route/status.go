package route

import (
	"fmt"
	"strings"

	"github.com/ambit-mesh/ambit/internal/meshconfig"
)

// Route status, in the Gateway API's words: the condition types and
// reasons a controller writes in a route's status.parents.
const (
	ConditionAccepted         = "Accepted"
	ConditionResolvedRefs     = "ResolvedRefs"
	ConditionPartiallyInvalid = "PartiallyInvalid"

	ReasonAccepted              = "Accepted"
	ReasonResolvedRefs          = "ResolvedRefs"
	ReasonNoMatchingParent      = "NoMatchingParent"
	ReasonNotAllowedByListeners = "NotAllowedByListeners"
	ReasonUnsupportedValue      = "UnsupportedValue"
	ReasonBackendNotFound       = "BackendNotFound"
	ReasonInvalidKind           = "InvalidKind"
	ReasonRefNotPermitted       = "RefNotPermitted"
	ReasonIncompatibleFilters   = "IncompatibleFilters"
	// ReasonConflicted: an HTTPRoute on a Service port that a GRPCRoute
	// also attaches to (GEP-1426: the GRPCRoute wins).
	ReasonConflicted = "Conflicted"
)

// Condition is one condition of a route on one parent.
type Condition struct {
	Type   string
	True   bool
	Reason string
	// Message says what was found and, when it is not true, what to fix.
	Message string
}

// ParentStatus is a route's status on one of its parents.
type ParentStatus struct {
	// Parent is the index of the parent in the route's Parents.
	Parent     int
	Conditions []Condition
}

// Status computes the route status a controller writes for r: one entry
// per parent, with the conditions Accepted, ResolvedRefs and, when some
// rules were left out, PartiallyInvalid. r may be a route of the table's
// Config or one that is not in it; it is judged against the table's
// Config.
func (t *Table) Status(r *meshconfig.Route) []ParentStatus {
	c := t.compiled[r]
	if c == nil {
		c = compileRoute(t.cfg, r)
	}
	var out []ParentStatus
	for _, p := range parentsOf(t.cfg, r) {
		ps := ParentStatus{Parent: p.index}
		var accepted Condition
		switch {
		case p.problem != nil:
			accepted = Condition{ConditionAccepted, false, p.problem.reason, p.problem.msg}
		case len(c.rules) == 0 && len(c.invalid) > 0:
			accepted = Condition{ConditionAccepted, false, c.invalid[0].reason, "no valid rule: " + joinProblems(c.invalid)}
		default:
			accepted = t.accepted(c, p)
		}
		ps.Conditions = append(ps.Conditions, accepted)
		if len(c.refs) > 0 {
			ps.Conditions = append(ps.Conditions, Condition{ConditionResolvedRefs, false, c.refs[0].reason, joinProblems(c.refs) + " (requests sent to it get 500)"})
		} else {
			ps.Conditions = append(ps.Conditions, Condition{ConditionResolvedRefs, true, ReasonResolvedRefs, "all references resolved"})
		}
		if len(c.rules) > 0 && len(c.invalid) > 0 {
			ps.Conditions = append(ps.Conditions, Condition{ConditionPartiallyInvalid, true, c.invalid[0].reason, "rules left out: " + joinProblems(c.invalid)})
		}
		out = append(out, ps)
	}
	return out
}

// GatewayConditions judges r, whose parent is a Gateway, against cfg:
// refused is an Accepted condition (false) when none of its rules can be
// served, else nil; conds are ResolvedRefs and, when some rules were left
// out, PartiallyInvalid.
func GatewayConditions(cfg *meshconfig.Config, r *meshconfig.Route) (refused *Condition, conds []Condition) {
	c := compileRoute(cfg, r)
	if len(c.rules) == 0 && len(c.invalid) > 0 {
		refused = &Condition{ConditionAccepted, false, c.invalid[0].reason, "no valid rule: " + joinProblems(c.invalid)}
	}
	if len(c.refs) > 0 {
		conds = append(conds, Condition{ConditionResolvedRefs, false, c.refs[0].reason, joinProblems(c.refs) + " (requests sent to it get 500)"})
	} else {
		conds = append(conds, Condition{ConditionResolvedRefs, true, ReasonResolvedRefs, "all references resolved"})
	}
	if len(c.rules) > 0 && len(c.invalid) > 0 {
		conds = append(conds, Condition{ConditionPartiallyInvalid, true, c.invalid[0].reason, "rules left out: " + joinProblems(c.invalid)})
	}
	return refused, conds
}

// accepted is the Accepted condition of a route with valid rules on a
// parent that resolved: true on the ports it holds, false when a GRPCRoute
// holds every one.
func (t *Table) accepted(c *compiledRoute, p parent) Condition {
	var conflicted, ok []uint16
	for _, port := range p.ports {
		if !c.grpc && t.grpcAt[bucket{p.svc.Key(), port, p.group}] {
			conflicted = append(conflicted, port)
		} else {
			ok = append(ok, port)
		}
	}
	if len(ok) == 0 {
		return Condition{ConditionAccepted, false, ReasonConflicted,
			fmt.Sprintf("a GRPCRoute attaches to Service %s port %s; the GRPCRoute wins (GEP-1426)", p.svc.Key(), ports(conflicted))}
	}
	msg := fmt.Sprintf("attached to Service %s port %s", p.svc.Key(), ports(ok))
	if p.group != "" {
		msg += fmt.Sprintf(" for clients in namespace %s (consumer route)", p.group)
	}
	if len(conflicted) > 0 {
		msg += fmt.Sprintf("; not on port %s, where a GRPCRoute wins", ports(conflicted))
	}
	if len(p.skipped) > 0 {
		msg += fmt.Sprintf("; not on port %s, whose appProtocol carries no HTTP", ports(p.skipped))
	}
	return Condition{ConditionAccepted, true, ReasonAccepted, msg}
}

func joinProblems(ps []problem) string {
	var b strings.Builder
	for i, p := range ps {
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(p.msg)
	}
	return b.String()
}

func ports(ps []uint16) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = fmt.Sprint(p)
	}
	return strings.Join(s, ", ")
}
