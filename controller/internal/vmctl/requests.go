package vmctl

import (
	"context"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshvm/meshvm/api/meshvm/v1alpha1"
	"github.com/meshvm/meshvm/pkg/fleetstore"
	"github.com/meshvm/meshvm/pkg/host/vmcore"
	"github.com/meshvm/meshvm/pkg/machine"
	"github.com/meshvm/meshvm/pkg/mesh/workload"
	agentv1 "github.com/meshvm/meshvm/proto/meshvm/agent/v1"
)

// Reasons of the Events that tell a person's request was acted on.
const (
	ReasonOnboarded     = "Onboarded"
	ReasonOnboardFailed = "OnboardFailed"
)

// onboardPending says whether the MeshVM carries a re-onboarding request
// (annotation meshvm.io/onboard) not yet acted on: the pass then issues a
// fresh token and delivers the files again.
func onboardPending(vm *v1alpha1.MeshVM) bool {
	v := vm.Annotations[v1alpha1.AnnotationOnboard]
	return v != "" && v != vm.Status.OnboardRequest
}

// requests acts on a person's requests once a pass went through: an
// onboarding is recorded once the pass delivered the files with the fresh
// token; a renewal (annotation meshvm.io/renew) replaces the token of a VM
// in the mesh now, whatever its life left, sending only that file. Each is
// recorded in the status with the value acted on, so it runs once.
func (r *Reconciler) requests(ctx context.Context, vm *v1alpha1.MeshVM, res vmcore.Result, spec vmcore.Spec, store *fleetstore.Store, deps vmcore.Deps) {
	if onboardPending(vm) && res.Status.Conditions.IsTrue(vmcore.FilesInSync) {
		asked := vm.Annotations[v1alpha1.AnnotationOnboard]
		if strings.HasSuffix(asked, v1alpha1.OnboardRestart) && !restarted(res) {
			if err := r.restartSidecar(ctx, vm.Name, store, deps); err != nil {
				r.event(vm, "Warning", ReasonOnboardFailed, "Onboard", "onboarding with a sidecar restart asked for (%s): %v", asked, err)
				return
			}
			// Until its proxy reconnects, the VM's Healthy is the old proxy's.
			notReady(vm, string(vmcore.SidecarRestarted), "sidecar restarted on request (%s): waiting for its proxy to reconnect", asked)
		}
		vm.Status.OnboardRequest = asked
		r.event(vm, "Normal", ReasonOnboarded, "Onboard", "onboarding asked for (%s): fresh token issued and the files delivered", vm.Status.OnboardRequest)
	}
	want := vm.Annotations[v1alpha1.AnnotationRenew]
	if want == "" || want == vm.Status.RenewRequest || !res.Done {
		return
	}
	renewal, err := vmcore.RenewToken(ctx, vm.Name, spec.TokenLifetime, true, store, deps)
	if err != nil {
		r.event(vm, "Warning", ReasonRotationFailed, "RotateToken", "token renewal asked for (%s): %v", want, err)
		return
	}
	now := metav1.NewTime(r.now().Truncate(time.Second))
	vm.Status.TokenRotatedAt, vm.Status.RenewRequest = &now, want
	r.event(vm, "Normal", ReasonTokenRotated, "RotateToken", "renewal asked for (%s): new token valid until %s; only the token file sent, the sidecar not restarted",
		want, renewal.ExpiresAt.UTC().Format(time.RFC3339))
}

// restarted says the pass restarted the sidecar itself (a file it reads at
// start changed).
func restarted(res vmcore.Result) bool {
	c, ok := res.Status.Conditions.Get(vmcore.SidecarRunning)
	return ok && c.Reason == vmcore.SidecarRestarted
}

// restartSidecar restarts VM vm's sidecar through its agent (vm onboard
// --restart) and records the restart, so that the next pass judges the VM
// Registered and Healthy from the new proxy's connection only.
func (r *Reconciler) restartSidecar(ctx context.Context, vm string, store *fleetstore.Store, deps vmcore.Deps) error {
	addr, err := store.Address(vm)
	if err != nil {
		return err
	}
	ac, err := vmcore.DialAgent(machine.Machine{Name: vm, State: machine.Running, Addresses: []string{addr}}, store)
	if err != nil {
		return err
	}
	defer ac.Close()
	prev, _, err := workload.FindEntry(ctx, deps.Kube, deps.Workload, addr)
	if err != nil {
		return err
	}
	if _, err := ac.Sidecar(ctx, agentv1.SidecarAction_SIDECAR_ACTION_RESTART); err != nil {
		return err
	}
	return store.SetLastRestart(vm, vmcore.Restart{At: r.now(), EntryBeforeRestart: prev.Name, EntryConnectedAt: prev.ConnectedAt, EntryProbedAt: prev.ProbedAt})
}
