package fleetmode

import (
	"context"
	"fmt"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/dynamic"

	"github.com/meshvm/meshvm/api/meshvm/v1alpha1"
	"github.com/meshvm/meshvm/pkg/host/fleet"
)

// Row is one MeshVM as kubectl get meshvms shows it, with its Ready
// condition's reason and message.
type Row = fleet.Declared

// List reads the MeshVMs of namespace ns.
func List(ctx context.Context, dc dynamic.Interface, ns string) ([]Row, error) {
	l, err := dc.Resource(MeshVMs).Namespace(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("MeshVMs in %s: %w (fleet mode is not on in this cluster)", ns, err)
	}
	rows := make([]Row, 0, len(l.Items))
	for _, u := range l.Items {
		var m v1alpha1.MeshVM
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &m); err != nil {
			return nil, err
		}
		rows = append(rows, row(m))
	}
	return rows, nil
}

func row(m v1alpha1.MeshVM) Row {
	r := Row{Name: m.Name, Namespace: m.Namespace, Ready: "Unknown", Agent: m.Status.Agent, Sidecar: m.Status.Sidecar, Healthy: m.Status.Healthy,
		Revision: m.Status.Revision, SpecRevision: m.Spec.Revision, Address: m.Status.Address, Created: m.CreationTimestamp.Time, Paused: m.Spec.Paused,
		Generation: m.Generation, RenewRequest: m.Status.RenewRequest, OnboardRequest: m.Status.OnboardRequest, Conditions: m.Status.Conditions}
	if t := m.Status.TokenRotatedAt; t != nil {
		r.TokenRotated = &t.Time
	}
	if !m.DeletionTimestamp.IsZero() {
		r.Deleting = true
	}
	if c := meta.FindStatusCondition(m.Status.Conditions, v1alpha1.ConditionReady); c != nil && c.ObservedGeneration == m.Generation {
		r.Ready, r.Reason, r.Message = string(c.Status), c.Reason, c.Message
	}
	if t := m.Status.TokenExpiresAt; t != nil {
		r.TokenExpires = &t.Time
	}
	return r
}

// WaitReady waits until the MeshVMs named in namespace ns are Ready,
// telling each change of their Ready condition as it is seen; at ctx's end
// it names each VM still not Ready with its reason.
func WaitReady(ctx context.Context, dc dynamic.Interface, ns string, names []string, say func(vm, format string, args ...any)) error {
	last := map[string]string{}
	for {
		rows, err := List(ctx, dc, ns)
		if err != nil {
			return err
		}
		byName := map[string]Row{}
		for _, r := range rows {
			byName[r.Name] = r
		}
		waiting := 0
		var why []string
		for _, n := range names {
			r, ok := byName[n]
			seen := r.Ready + " " + r.Reason + " " + r.Message
			switch {
			case !ok:
				seen = "no MeshVM"
			case r.Ready == "True":
				if last[n] != seen {
					say(n, "Ready: %s", r.Message)
				}
			default:
				if last[n] != seen && r.Reason != "" {
					say(n, "%s: %s", r.Reason, strings.TrimSuffix(r.Message, ": "))
				}
			}
			last[n] = seen
			if !ok || r.Ready != "True" {
				waiting++
				why = append(why, fmt.Sprintf("%s: %s", n, seen))
			}
		}
		if waiting == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("not Ready: %v (see kubectl describe meshvm, and the controller's log)", why)
		case <-time.After(time.Second):
		}
	}
}
