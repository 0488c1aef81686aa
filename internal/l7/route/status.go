package route

import (
	"fmt"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambit-mesh/ambit/internal/meshconfig"
)

// ReasonConflicted is the Accepted=False reason of an HTTPRoute on a
// Service port that a GRPCRoute also attaches to (GEP-1426: the GRPCRoute
// wins). The Gateway API has no constant for it yet.
const ReasonConflicted gatewayv1.RouteConditionReason = "Conflicted"

// Status computes the route status a controller writes for r: one entry
// per Service parentRef (parentRefs to gateways are not Ambit's), with the
// conditions Accepted, ResolvedRefs and, when some rules were left out,
// PartiallyInvalid. r may be a route of the table's Config or one that is
// not in it (a route the Config's builder refused); it is judged against
// the table's Config. The conditions carry generation and now as
// observedGeneration and lastTransitionTime (keep the old time when a
// condition did not change).
func (t *Table) Status(r *meshconfig.Route, controller gatewayv1.GatewayController, generation int64, now time.Time) []gatewayv1.RouteParentStatus {
	c := t.compiled[r]
	if c == nil {
		c = compileRoute(t.cfg, r)
	}
	cond := func(typ gatewayv1.RouteConditionType, ok bool, reason gatewayv1.RouteConditionReason, msg string) metav1.Condition {
		st := metav1.ConditionFalse
		if ok {
			st = metav1.ConditionTrue
		}
		return metav1.Condition{
			Type: string(typ), Status: st, Reason: string(reason), Message: msg,
			ObservedGeneration: generation, LastTransitionTime: metav1.NewTime(now),
		}
	}
	var out []gatewayv1.RouteParentStatus
	for _, p := range parentsOf(t.cfg, r) {
		ps := gatewayv1.RouteParentStatus{ParentRef: p.ref, ControllerName: controller}
		var accepted metav1.Condition
		switch {
		case p.problem != nil:
			accepted = cond(gatewayv1.RouteConditionAccepted, false, p.problem.reason, p.problem.msg)
		case len(c.rules) == 0 && len(c.invalid) > 0:
			accepted = cond(gatewayv1.RouteConditionAccepted, false, c.invalid[0].reason, "no valid rule: "+joinProblems(c.invalid))
		default:
			var conflicted, ok []uint16
			for _, port := range p.ports {
				if !c.grpc && t.grpcAt[bucket{p.svc.Key(), port, p.group}] {
					conflicted = append(conflicted, port)
				} else {
					ok = append(ok, port)
				}
			}
			if len(ok) == 0 {
				accepted = cond(gatewayv1.RouteConditionAccepted, false, ReasonConflicted,
					fmt.Sprintf("a GRPCRoute attaches to Service %s port %s; the GRPCRoute wins (GEP-1426)", p.svc.Key(), ports(conflicted)))
				break
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
			accepted = cond(gatewayv1.RouteConditionAccepted, true, gatewayv1.RouteReasonAccepted, msg)
		}
		ps.Conditions = append(ps.Conditions, accepted)
		if len(c.refs) > 0 {
			ps.Conditions = append(ps.Conditions, cond(gatewayv1.RouteConditionResolvedRefs, false, c.refs[0].reason,
				joinProblems(c.refs)+" (requests sent to it get 500)"))
		} else {
			ps.Conditions = append(ps.Conditions, cond(gatewayv1.RouteConditionResolvedRefs, true, gatewayv1.RouteReasonResolvedRefs, "all references resolved"))
		}
		if len(c.rules) > 0 && len(c.invalid) > 0 {
			ps.Conditions = append(ps.Conditions, cond(gatewayv1.RouteConditionPartiallyInvalid, true, c.invalid[0].reason,
				"rules left out: "+joinProblems(c.invalid)))
		}
		out = append(out, ps)
	}
	return out
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
