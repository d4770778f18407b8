package fleetmode

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"

	"github.com/meshvm/meshvm/api/meshvm/v1alpha1"
	"github.com/meshvm/meshvm/pkg/host/config"
	"github.com/meshvm/meshvm/pkg/host/fleet"
	"github.com/meshvm/meshvm/pkg/mesh/fleetinstall"
	"github.com/meshvm/meshvm/pkg/mesh/ownership"
	"github.com/meshvm/meshvm/pkg/reason"
)

// The commands below act on MeshVMs only: what a VM needs is the
// controller's to do, each request recorded on the object (an annotation
// or spec.paused) so that it survives the command and a controller's
// restart, and what the command waits on is the controller's status.

// Statuses is vm status in fleet mode: what the agents and istiod say of
// each VM (fleet.Statuses), with its MeshVM; whether a VM is fine is its
// MeshVM's Ready, as the controller set it from the per-VM core.
func Statuses(ctx context.Context, f *fleet.Fleet, vms []config.VM, p fleet.Reporter) ([]fleet.VMStatus, error) {
	dc, err := Dynamic(f)
	if err != nil {
		return nil, err
	}
	rows, err := List(ctx, dc, f.Config.Workload.Namespace)
	if err != nil {
		return nil, err
	}
	if err := UseCluster(ctx, f); err != nil {
		return nil, err
	}
	out, err := f.Statuses(ctx, vms, p)
	if err != nil {
		return nil, err
	}
	for i := range out {
		s := &out[i]
		k := slices.IndexFunc(rows, func(r Row) bool { return r.Name == s.Name })
		if k < 0 {
			s.OK, s.Next, s.Cause = false, "no MeshVM: fleet mode has not declared it", reason.Because(reason.NotDeclared, s.Name)
			continue
		}
		r := rows[k]
		s.MeshVM = &r
		if r.Revision != "" {
			s.Revision = r.Revision
		}
		s.OK, s.Next, s.Cause = judge(r)
	}
	return out, nil
}

// judge is a MeshVM's verdict: its Ready, unless paused or deleting.
func judge(r Row) (bool, string, reason.Cause) {
	switch {
	case r.Deleting:
		return false, "its MeshVM is being deleted: " + r.Message, reason.Cause{}
	case r.Paused:
		return false, "paused (spec.paused, set by vm revoke): the controller does not act on it", reason.Because(reason.VMPaused, r.Name)
	case r.Ready == "True":
		return true, "", reason.Cause{}
	case r.Reason == "":
		return false, "the controller has not reported on this generation of its MeshVM yet", reason.Cause{}
	}
	return false, fmt.Sprintf("Ready %s: %s: %s", r.Ready, r.Reason, r.Message), reason.Cause{}
}

// Request asks the controller to act on each VM named once more: it sets
// annotation (v1alpha1.AnnotationRenew or AnnotationOnboard) to a new
// value, which it returns; onboarding also ends a pause (vm revoke's).
// A VM with no MeshVM, or one meshvm did not create, is an error naming it.
func Request(ctx context.Context, dc dynamic.Interface, ns string, names []string, annotation string) (string, error) {
	return request(ctx, dc, ns, names, annotation, time.Now().UTC().Format(time.RFC3339Nano))
}

// RequestRestart is Request of an onboarding that also restarts each
// VM's sidecar (vm onboard --restart): the controller does it, and records
// the request once it has.
func RequestRestart(ctx context.Context, dc dynamic.Interface, ns string, names []string) (string, error) {
	return request(ctx, dc, ns, names, v1alpha1.AnnotationOnboard, time.Now().UTC().Format(time.RFC3339Nano)+v1alpha1.OnboardRestart)
}

func request(ctx context.Context, dc dynamic.Interface, ns string, names []string, annotation, value string) (string, error) {
	patch := map[string]any{"metadata": map[string]any{"annotations": map[string]string{annotation: value}}}
	if annotation == v1alpha1.AnnotationOnboard {
		patch["spec"] = map[string]any{"paused": nil}
	}
	b, err := json.Marshal(patch)
	if err != nil {
		return "", err
	}
	for _, n := range names {
		if err := patchOurs(ctx, dc, ns, n, b); err != nil {
			return "", err
		}
	}
	return value, nil
}

// Pause sets spec.paused on VM name's MeshVM, saying whether it changed:
// the controller then leaves the VM alone (vm revoke: it would otherwise
// issue the VM a token again).
func Pause(ctx context.Context, dc dynamic.Interface, ns, name string) (bool, error) {
	u, err := dc.Resource(MeshVMs).Namespace(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return false, declaredErr(ns, name, err)
	}
	if paused, _, _ := unstructured.NestedBool(u.Object, "spec", "paused"); paused {
		return false, nil
	}
	return true, patchOurs(ctx, dc, ns, name, []byte(`{"spec":{"paused":true}}`))
}

func patchOurs(ctx context.Context, dc dynamic.Interface, ns, name string, patch []byte) error {
	api := dc.Resource(MeshVMs).Namespace(ns)
	u, err := api.Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return declaredErr(ns, name, err)
	}
	if !ownership.Owned(u) {
		return fmt.Errorf("MeshVM %s/%s is not meshvm's (no %s=%s label): it is left to whoever created it", ns, name, ownership.Label, ownership.Value)
	}
	_, err = api.Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: ownership.FieldManager + "-request"})
	return err
}

func declaredErr(ns, name string, err error) error {
	if apierrors.IsNotFound(err) {
		return reason.Wrap(fmt.Errorf("no MeshVM %s/%s", ns, name), reason.NotDeclared, name)
	}
	return fmt.Errorf("MeshVM %s/%s: %w", ns, name, err)
}

// WaitRequest waits until the controller has acted on request value for
// each VM named (done reads it from the row) and the VM is Ready, telling
// each change of Ready as it is seen.
func WaitRequest(ctx context.Context, dc dynamic.Interface, ns string, names []string, done func(Row) bool, say func(vm, format string, args ...any)) ([]Row, error) {
	return waitRows(ctx, dc, ns, names, done, nil, say)
}

// waitRows is WaitRequest that gives up at once on a VM whose row fails
// says will not get there (nil: never).
func waitRows(ctx context.Context, dc dynamic.Interface, ns string, names []string, done func(Row) bool, fails func(Row) error, say func(vm, format string, args ...any)) ([]Row, error) {
	last := map[string]string{}
	for {
		rows, err := List(ctx, dc, ns)
		if err != nil {
			return nil, err
		}
		var got []Row
		var why []string
		for _, n := range names {
			k := slices.IndexFunc(rows, func(r Row) bool { return r.Name == n })
			if k < 0 {
				return nil, fmt.Errorf("no MeshVM %s/%s: it was deleted meanwhile", ns, n)
			}
			r := rows[k]
			seen := r.Ready + " " + r.Reason + " " + r.Message
			if last[n] != seen && r.Reason != "" && r.Ready != "True" {
				say(n, "%s: %s", r.Reason, strings.TrimSuffix(r.Message, ": "))
			}
			last[n] = seen
			if fails != nil {
				if err := fails(r); err != nil {
					return nil, fmt.Errorf("%s: %w", n, err)
				}
			}
			if !done(r) || r.Ready != "True" {
				why = append(why, fmt.Sprintf("%s: %s", n, seen))
				continue
			}
			got = append(got, r)
		}
		if len(why) == 0 {
			return got, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("the controller has not acted on the request: %s (see kubectl describe meshvm, and the controller's log)", strings.Join(why, "; "))
		case <-time.After(time.Second):
		}
	}
}

// Delete deletes the MeshVMs named that are meshvm's and waits until each
// is gone: their finalizer revokes the token, deletes the WorkloadEntry
// and has the agent undo its changes, which needs the controller running.
// A MeshVM already gone is no error; one that is not meshvm's is left,
// saying so.
func Delete(ctx context.Context, dc dynamic.Interface, ns string, names []string, say func(format string, args ...any)) error {
	api := dc.Resource(MeshVMs).Namespace(ns)
	var waiting []string
	for _, n := range names {
		u, err := api.Get(ctx, n, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			say("no MeshVM %s/%s", ns, n)
			continue
		case err != nil:
			return err
		case !ownership.Owned(u):
			say("MeshVM %s/%s: %s", ns, n, ownership.Yours)
			continue
		}
		if u.GetDeletionTimestamp() == nil {
			if err := api.Delete(ctx, n, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
				return err
			}
		}
		waiting = append(waiting, n)
	}
	start := time.Now()
	for len(waiting) > 0 {
		var left []string
		var why []string
		for _, n := range waiting {
			u, err := api.Get(ctx, n, metav1.GetOptions{})
			switch {
			case apierrors.IsNotFound(err):
				say("MeshVM %s/%s deleted: its token revoked, its WorkloadEntry deleted, its agent's changes undone (%s)", ns, n, time.Since(start).Round(100*time.Millisecond))
			case err != nil:
				return err
			default:
				left = append(left, n)
				why = append(why, n+": "+readyMessage(u))
			}
		}
		if waiting = left; len(waiting) == 0 {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("MeshVMs still held by their finalizer (%s): %s (is the controller running? see its log)", v1alpha1.Finalizer, strings.Join(why, "; "))
		case <-time.After(500 * time.Millisecond):
		}
	}
	return nil
}

// Ours lists the names of the MeshVMs in ns that meshvm created.
func Ours(ctx context.Context, dc dynamic.Interface, ns string) ([]string, error) {
	l, err := dc.Resource(MeshVMs).Namespace(ns).List(ctx, metav1.ListOptions{LabelSelector: ownership.Label + "=" + ownership.Value})
	if apierrors.IsNotFound(err) {
		return nil, nil // no MeshVM CRD: fleet mode never ran in this cluster
	}
	if err != nil {
		return nil, err
	}
	var out []string
	for _, u := range l.Items {
		out = append(out, u.GetName())
	}
	return out, nil
}

// readyMessage is a MeshVM's Ready condition's message ("" before one).
func readyMessage(u *unstructured.Unstructured) string {
	conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	for _, c := range conds {
		if m, _ := c.(map[string]any); m["type"] == v1alpha1.ConditionReady {
			msg, _ := m["message"].(string)
			return msg
		}
	}
	return ""
}

// ControllerInstalled says whether fleet install's Deployment is in f's
// cluster (a cluster of yours, where installing it is the owner's call).
func ControllerInstalled(ctx context.Context, f *fleet.Fleet) (bool, error) {
	clients, err := fleet.KubeClients(f.Site.Kubeconfig())
	if err != nil {
		return false, err
	}
	_, err = clients.Kube.AppsV1().Deployments(fleetinstall.DefaultNamespace).Get(ctx, fleetinstall.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	return err == nil, err
}
