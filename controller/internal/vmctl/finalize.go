package vmctl

import (
	"context"
	"errors"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	"github.com/meshvm/meshvm/api/meshvm/v1alpha1"
	"github.com/meshvm/meshvm/pkg/fleetstore"
	"github.com/meshvm/meshvm/pkg/host/vmcore"
	"github.com/meshvm/meshvm/pkg/machine"
)

// finalize takes a deleted MeshVM's VM out of the mesh: its token revoked
// and its WorkloadEntry deleted at once, its agent's changes undone where
// the agent answers. A VM whose agent never answers is released after
// ReleaseAfter, saying what stays on it. Its records go last.
func (r *Reconciler) finalize(ctx context.Context, vm *v1alpha1.MeshVM, store *fleetstore.Store) (ctrl.Result, error) {
	if !controllerutil.ContainsFinalizer(vm, v1alpha1.Finalizer) {
		return ctrl.Result{}, nil
	}
	addr, err := r.address(ctx, vm, store)
	if err != nil {
		return ctrl.Result{}, err
	}
	deps := r.deps(vm, addr, workloadSpec(vm, nil))
	// A VM with no records was never reached (its pass stopped at a bad
	// spec): nothing on it is meshvm's to undo.
	recorded, err := store.Known(vm.Name)
	if err != nil {
		return ctrl.Result{}, err
	}
	var undone error
	if recorded {
		actx, cancel := context.WithTimeout(ctx, 30*time.Second)
		undone = vmcore.UndoAgent(actx, machine.Machine{Name: vm.Name, State: machine.Running, Addresses: []string{addr}}, store)
		cancel()
	}
	_, entry, eerr := vmcore.DeleteEntry(ctx, vm.Name, machine.Machine{Name: vm.Name, Addresses: []string{addr}}, store, deps)
	_, rerr := vmcore.Revoke(ctx, vm.Name, deps)
	if err := errors.Join(eerr, rerr); err != nil {
		return ctrl.Result{}, err
	}
	if undone != nil {
		waited := r.now().Sub(vm.DeletionTimestamp.Time)
		if left := r.releaseAfter() - waited; left > 0 {
			orig := vm.DeepCopy()
			setCondition(&vm.Status, metav1.Condition{Type: v1alpha1.ConditionReady, Status: metav1.ConditionFalse, Reason: ReasonAgentGone,
				Message: "deleting: token revoked, WorkloadEntry deleted; the agent at " + addr + " does not answer (" + undone.Error() +
					"): its changes are undone when it does, or the VM is released " + r.releaseAfter().String() + " after the delete",
				ObservedGeneration: vm.Generation})
			if err := r.writeStatus(ctx, vm, orig); err != nil {
				return ctrl.Result{}, err
			}
			return ctrl.Result{RequeueAfter: min(left, 30*time.Second)}, nil
		}
		r.event(vm, "Warning", ReasonReleased, "Delete",
			"released %s after the delete without an answer from its agent (%v): token revoked, WorkloadEntry %s deleted; the sidecar, hosts block and capture rules stay on the VM: run hostctl vm rm %s where the machine is reachable",
			r.releaseAfter(), undone, orNone(entry), vm.Name)
	} else if recorded {
		r.event(vm, "Normal", ReasonRemoved, "Delete", "the agent undid its changes, WorkloadEntry %s deleted, token revoked", orNone(entry))
	} else {
		r.event(vm, "Normal", ReasonRemoved, "Delete", "never onboarded: nothing to undo on the VM")
	}
	if err := store.Forget(vm.Name); err != nil {
		return ctrl.Result{}, err
	}
	controllerutil.RemoveFinalizer(vm, v1alpha1.Finalizer)
	return ctrl.Result{}, r.Client.Update(ctx, vm)
}

func (r *Reconciler) releaseAfter() time.Duration {
	if r.ReleaseAfter > 0 {
		return r.ReleaseAfter
	}
	return DefaultReleaseAfter
}

func orNone(s string) string {
	if s == "" {
		return "(none left)"
	}
	return s
}
