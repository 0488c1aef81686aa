package kubesource

import (
	"context"
	"fmt"
	"reflect"
	"slices"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"

	crd "github.com/ambit-mesh/ambit/api/crd/v1alpha1"
	"github.com/ambit-mesh/ambit/internal/meshconfig"
)

// writeStatus writes the conditions of Ambit's resources, and Ambit's
// entries in the status of Gateway API routes, where they changed. It
// reports whether a write failed.
func (s *Source) writeStatus(ctx context.Context, st *state) (failed bool) {
	problems := map[string][]meshconfig.Problem{}
	for _, p := range st.problems {
		k := objKey(p.Kind, p.Namespace, p.Name)
		problems[k] = append(problems[k], p)
	}
	for _, u := range st.accessPolicies {
		c := accessPolicyCondition(st, u)
		failed = s.setStatus(ctx, crd.AccessPoliciesResource, u, []metav1.Condition{c}, nil) || failed
	}
	for _, u := range st.trafficPolicies {
		c := trafficPolicyCondition(st, u, problems[objKey(meshconfig.KindTrafficPolicy, u.GetNamespace(), u.GetName())])
		failed = s.setStatus(ctx, crd.TrafficPoliciesResource, u, []metav1.Condition{c}, nil) || failed
	}
	for _, u := range st.waypoints {
		key := objKey(meshconfig.KindWaypoint, u.GetNamespace(), u.GetName())
		accepted := metav1.Condition{Type: crd.ConditionAccepted, Status: metav1.ConditionTrue, Reason: crd.ReasonAccepted, Message: "the controller runs this waypoint"}
		prog := metav1.Condition{Type: crd.ConditionProgrammed}
		extra := map[string]any{}
		if why, bad := st.invalid[key]; bad {
			accepted = metav1.Condition{Type: crd.ConditionAccepted, Status: metav1.ConditionFalse, Reason: crd.ReasonInvalid, Message: why}
			prog.Status, prog.Reason, prog.Message = metav1.ConditionFalse, crd.ReasonInvalid, "not accepted"
		} else {
			p, ok := st.programmed[key]
			if !ok {
				p = programmed{metav1.ConditionUnknown, crd.ReasonPending, "not reconciled yet"}
			}
			prog.Status, prog.Reason, prog.Message = p.status, p.reason, p.message
			if w := st.config.Waypoint(u.GetNamespace(), u.GetName()); w != nil {
				var addrs []any
				for _, a := range w.Addresses {
					addrs = append(addrs, a.String())
				}
				extra["addresses"] = addrs
				if d, err := s.deploys.Deployments(u.GetNamespace()).Get(u.GetName()); err == nil && ownedBy(d.OwnerReferences, u) {
					extra["readyReplicas"] = int64(d.Status.AvailableReplicas)
				}
			}
		}
		failed = s.setStatus(ctx, crd.WaypointsResource, u, []metav1.Condition{accepted, prog}, extra) || failed
	}
	failed = s.writeGatewayStatus(ctx, st) || failed
	return s.writeRouteStatus(ctx, st) || failed
}

func accessPolicyCondition(st *state, u *unstructured.Unstructured) metav1.Condition {
	if why, bad := st.invalid[objKey(meshconfig.KindAccessPolicy, u.GetNamespace(), u.GetName())]; bad {
		return metav1.Condition{Type: crd.ConditionAccepted, Status: metav1.ConditionFalse, Reason: crd.ReasonInvalid, Message: why}
	}
	msg := "enforced by the node proxies of the workloads it selects"
	for _, p := range st.config.Policies {
		if p.Namespace == u.GetNamespace() && p.Name == u.GetName() {
			for i, r := range p.Rules {
				if r.L7 {
					msg += fmt.Sprintf("; rule %d names HTTP attributes (methods, paths, hosts, headers), which only a waypoint can check: node proxies treat it as matching for DENY and not matching for ALLOW", i)
					break
				}
			}
		}
	}
	return metav1.Condition{Type: crd.ConditionAccepted, Status: metav1.ConditionTrue, Reason: crd.ReasonAccepted, Message: msg}
}

func trafficPolicyCondition(st *state, u *unstructured.Unstructured, problems []meshconfig.Problem) metav1.Condition {
	if why, bad := st.invalid[objKey(meshconfig.KindTrafficPolicy, u.GetNamespace(), u.GetName())]; bad {
		return metav1.Condition{Type: crd.ConditionAccepted, Status: metav1.ConditionFalse, Reason: crd.ReasonInvalid, Message: why}
	}
	var msgs []string
	for _, p := range problems {
		msgs = append(msgs, p.Message)
	}
	var tp *meshconfig.TrafficPolicy
	for _, x := range st.config.TrafficPolicies {
		if x.Namespace == u.GetNamespace() && x.Name == u.GetName() {
			tp = x
		}
	}
	if tp == nil {
		reason := crd.ReasonTargetNotFound
		if len(problems) > 0 && !slices.ContainsFunc(problems, func(p meshconfig.Problem) bool { return p.Reason == meshconfig.ReasonTargetNotFound }) {
			reason = crd.ReasonConflicted
		}
		return metav1.Condition{Type: crd.ConditionAccepted, Status: metav1.ConditionFalse, Reason: reason, Message: strings.Join(msgs, "; ")}
	}
	msg := "applies to Service " + strings.Join(tp.Targets, ", ")
	if len(msgs) > 0 {
		msg += "; " + strings.Join(msgs, "; ")
	}
	return metav1.Condition{Type: crd.ConditionAccepted, Status: metav1.ConditionTrue, Reason: crd.ReasonAccepted, Message: msg}
}

// setStatus sets conditions (with the object's generation) and extra
// status fields on u, and writes the status if it changed. It reports
// whether the write failed; a conflict is not a failure (the newer object
// brings another round).
func (s *Source) setStatus(ctx context.Context, gvr schema.GroupVersionResource, u *unstructured.Unstructured, conds []metav1.Condition, extra map[string]any) (failed bool) {
	var cur struct {
		Conditions []metav1.Condition `json:"conditions"`
	}
	if st, ok := u.Object["status"].(map[string]any); ok {
		_ = runtime.DefaultUnstructuredConverter.FromUnstructured(st, &cur)
	}
	next := slices.Clone(cur.Conditions)
	for _, c := range conds {
		c.ObservedGeneration = u.GetGeneration()
		meta.SetStatusCondition(&next, c)
	}
	status := map[string]any{}
	if st, ok := u.Object["status"].(map[string]any); ok {
		for k, v := range st {
			status[k] = v
		}
	}
	list, err := runtime.DefaultUnstructuredConverter.ToUnstructured(&struct {
		Conditions []metav1.Condition `json:"conditions"`
	}{next})
	if err != nil {
		return true
	}
	status["conditions"] = list["conditions"]
	if gvr == crd.WaypointsResource {
		status["observedGeneration"] = u.GetGeneration()
		delete(status, "addresses")
		delete(status, "readyReplicas")
	}
	for k, v := range extra {
		if v != nil && !(k == "addresses" && len(v.([]any)) == 0) {
			status[k] = v
		}
	}
	if old, ok := u.Object["status"]; ok && reflect.DeepEqual(normalize(old), normalize(status)) {
		return false
	}
	obj := u.DeepCopy()
	obj.Object["status"] = status
	_, err = s.dyn.Resource(gvr).Namespace(u.GetNamespace()).UpdateStatus(ctx, obj, metav1.UpdateOptions{FieldManager: s.opts.FieldManager})
	switch {
	case err == nil:
		return false
	case apierrors.IsConflict(err), apierrors.IsNotFound(err):
		return false
	}
	s.log.Warn("cannot write status", "resource", gvr.Resource, "object", u.GetNamespace()+"/"+u.GetName(), "err", err)
	return true
}

// normalize makes numbers comparable across what the API server returned
// (int64) and what was computed.
func normalize(v any) any {
	data, err := runtime.DefaultUnstructuredConverter.ToUnstructured(&struct {
		S any `json:"s"`
	}{v})
	if err != nil {
		return v
	}
	return data["s"]
}
