package vmctl

import (
	"context"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshvm/meshvm/api/meshvm/v1alpha1"
	"github.com/meshvm/meshvm/pkg/fleetstore"
	"github.com/meshvm/meshvm/pkg/host/vmcore"
)

// Reasons of the Events that tell a person's request was acted on.
const (
	ReasonOnboarded = "Onboarded"
)

// onboardPending says whether the MeshVM carries a re-onboarding request
// (annotation meshvm.io/onboard) not yet acted on: the pass then issues a
// fresh token and delivers the files again.
func onboardPending(vm *v1alpha1.MeshVM) bool {
	v := vm.Annotations[v1alpha1.AnnotationOnboard]
	return v != "" && v != vm.Status.OnboardRequest
}

// restartPending says the pending onboarding also asks for a sidecar
// restart (vm onboard --restart).
func restartPending(vm *v1alpha1.MeshVM) bool {
	return onboardPending(vm) && strings.HasSuffix(vm.Annotations[v1alpha1.AnnotationOnboard], v1alpha1.OnboardRestart)
}

// requests acts on a person's requests once a pass went through: an
// onboarding is recorded once the pass delivered the files with the fresh
// token; a renewal (annotation meshvm.io/renew) replaces the token of a VM
// in the mesh now, whatever its life left, sending only that file. Each is
// recorded in the status with the value acted on, so it runs once.
func (r *Reconciler) requests(ctx context.Context, vm *v1alpha1.MeshVM, res vmcore.Result, spec vmcore.Spec, store *fleetstore.Store, deps vmcore.Deps) {
	// The pass restarted the sidecar itself when asked (spec.Restart): the
	// request is done once it did, else the next pass does it again.
	if onboardPending(vm) && res.Status.Conditions.IsTrue(vmcore.FilesInSync) && (!restartPending(vm) || restarted(res)) {
		vm.Status.OnboardRequest = vm.Annotations[v1alpha1.AnnotationOnboard]
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
