package kubesource

import (
	"context"
	"reflect"
	"slices"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambit-mesh/ambit/internal/l7/route"
	"github.com/ambit-mesh/ambit/internal/meshconfig"
)

// ControllerName is the controllerName of the entries Ambit writes in a
// route's status.parents.
const ControllerName gatewayv1.GatewayController = "ambit.dev/controller"

// writeRouteStatus writes, for each Gateway API route, the status.parents
// entries of its Service parentRefs (route.Table.Status), where they
// changed. Entries of other controllers are kept as they are. It reports
// whether a write failed.
func (s *Source) writeRouteStatus(ctx context.Context, st *state) (failed bool) {
	if len(st.routes) == 0 {
		return false
	}
	table := route.Compile(st.config)
	inConfig := map[string]*meshconfig.Route{}
	for _, r := range st.config.Routes {
		inConfig[objKey(r.Kind, r.Namespace, r.Name)] = r
	}
	dropped := map[string][]string{}
	for _, p := range st.problems {
		if p.Kind == meshconfig.KindHTTPRoute || p.Kind == meshconfig.KindGRPCRoute {
			k := objKey(p.Kind, p.Namespace, p.Name)
			dropped[k] = append(dropped[k], p.Message)
		}
	}
	now := time.Now()
	for _, ro := range st.routes {
		gen := ro.u.GetGeneration()
		key := objKey(ro.kind, ro.u.GetNamespace(), ro.u.GetName())
		var want []gatewayv1.RouteParentStatus
		switch r := inConfig[key]; {
		case len(ro.parents) == 0:
			// No Service parent: Ambit's mesh entries, if any, go.
		case r != nil:
			want = parentStatuses(table.Status(r), ro.parents, gen, now)
		default:
			// Refused by the builder, or left out because none of its
			// parent Services (ports) exists.
			reason, msg := gatewayv1.RouteReasonUnsupportedValue, ro.refused
			if msg == "" {
				reason, msg = gatewayv1.RouteReasonNoMatchingParent, strings.Join(dropped[key], "; ")
				if msg == "" {
					msg = "no parent Service (port) of this route exists"
				}
			}
			for _, ref := range ro.parents {
				want = append(want, gatewayv1.RouteParentStatus{ParentRef: ref, ControllerName: ControllerName, Conditions: []metav1.Condition{{
					Type: string(gatewayv1.RouteConditionAccepted), Status: metav1.ConditionFalse, Reason: string(reason), Message: msg,
					ObservedGeneration: gen, LastTransitionTime: metav1.NewTime(now),
				}}})
			}
		}
		if len(ro.gwParents) > 0 {
			want = append(want, gatewayParentStatuses(st.config, inConfig[key], ro.refused, ro.u.GetNamespace(), ro.gwParents, gen, now)...)
		}
		failed = s.setRouteStatus(ctx, ro, want) || failed
	}
	return failed
}

// parentStatuses writes the route package's verdicts as the Gateway
// API's status.parents entries: each for its parentRef (parents are the
// route's Service parentRefs, in the order the model's route has them),
// with generation and now as observedGeneration and lastTransitionTime
// (setRouteStatus keeps the old time of a condition that did not change).
func parentStatuses(verdicts []route.ParentStatus, parents []gatewayv1.ParentReference, generation int64, now time.Time) []gatewayv1.RouteParentStatus {
	var out []gatewayv1.RouteParentStatus
	for _, v := range verdicts {
		if v.Parent >= len(parents) {
			continue
		}
		ps := gatewayv1.RouteParentStatus{ParentRef: parents[v.Parent], ControllerName: ControllerName}
		for _, c := range v.Conditions {
			st := metav1.ConditionFalse
			if c.True {
				st = metav1.ConditionTrue
			}
			ps.Conditions = append(ps.Conditions, metav1.Condition{
				Type: c.Type, Status: st, Reason: c.Reason, Message: c.Message,
				ObservedGeneration: generation, LastTransitionTime: metav1.NewTime(now),
			})
		}
		out = append(out, ps)
	}
	return out
}

// setRouteStatus replaces Ambit's entries in the route's status.parents by
// want, keeping the lastTransitionTime of conditions that did not change,
// and writes the status if it changed.
func (s *Source) setRouteStatus(ctx context.Context, ro routeObject, want []gatewayv1.RouteParentStatus) (failed bool) {
	u := ro.u
	var cur gatewayv1.RouteStatus
	st, _ := u.Object["status"].(map[string]any)
	if st != nil {
		_ = runtime.DefaultUnstructuredConverter.FromUnstructured(st, &cur)
	}
	var next []gatewayv1.RouteParentStatus
	ambit := func(p gatewayv1.RouteParentStatus) bool {
		return p.ControllerName == ControllerName || p.ControllerName == meshconfig.GatewayControllerName
	}
	for _, p := range cur.Parents {
		if !ambit(p) {
			next = append(next, p)
		}
	}
	for _, w := range want {
		var conds []metav1.Condition
		for _, p := range cur.Parents {
			if ambit(p) && reflect.DeepEqual(normalize(p.ParentRef), normalize(w.ParentRef)) {
				conds = slices.Clone(p.Conditions)
			}
		}
		// Conditions Ambit no longer reports (PartiallyInvalid) go.
		conds = slices.DeleteFunc(conds, func(c metav1.Condition) bool {
			return meta.FindStatusCondition(w.Conditions, c.Type) == nil
		})
		for _, c := range w.Conditions {
			meta.SetStatusCondition(&conds, c)
		}
		w.Conditions = conds
		next = append(next, w)
	}
	list, err := runtime.DefaultUnstructuredConverter.ToUnstructured(&struct {
		Parents []gatewayv1.RouteParentStatus `json:"parents"`
	}{next})
	if err != nil {
		return true
	}
	parents, _ := list["parents"].([]any)
	if parents == nil {
		parents = []any{}
	}
	var old any = []any{}
	if st != nil && st["parents"] != nil {
		old = st["parents"]
	}
	if reflect.DeepEqual(normalize(old), normalize(parents)) {
		return false
	}
	status := map[string]any{}
	for k, v := range st {
		status[k] = v
	}
	status["parents"] = parents
	obj := u.DeepCopy()
	obj.Object["status"] = status
	_, err = s.dyn.Resource(ro.gvr).Namespace(u.GetNamespace()).UpdateStatus(ctx, obj, metav1.UpdateOptions{FieldManager: s.opts.FieldManager})
	switch {
	case err == nil:
		return false
	case apierrors.IsConflict(err), apierrors.IsNotFound(err):
		return false
	}
	s.log.Warn("cannot write route status", "resource", ro.gvr.Resource, "object", u.GetNamespace()+"/"+u.GetName(), "err", err)
	return true
}
