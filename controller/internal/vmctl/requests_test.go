package vmctl

import (
	"context"
	"strings"
	"testing"

	"github.com/meshvm/meshvm/api/meshvm/v1alpha1"
	"github.com/meshvm/meshvm/pkg/fleetstore"
	"github.com/meshvm/meshvm/pkg/host/vmcore"
)

// A person's requests are acted on once: an onboarding is pending until a
// pass delivered the files, then recorded; a renewal waits for a VM in
// the mesh (a pass not Done leaves it pending, and nothing is sent).
func TestRequestsActedOnOnce(t *testing.T) {
	vm := meshVM("vm1", func(m *v1alpha1.MeshVM) {
		m.Annotations = map[string]string{v1alpha1.AnnotationOnboard: "t1", v1alpha1.AnnotationRenew: "r1"}
	})
	f := newFixture(t, vm)
	if !onboardPending(vm) {
		t.Fatal("a new onboard request is not pending")
	}
	store := fleetstore.New(context.Background(), f.kube, "", "vmns")
	var undelivered vmcore.Result
	f.r.requests(context.Background(), vm, undelivered, vmcore.Spec{Name: "vm1"}, store, vmcore.Deps{})
	if vm.Status.OnboardRequest != "" || vm.Status.RenewRequest != "" {
		t.Fatalf("recorded before the files were delivered: %+v", vm.Status)
	}
	var delivered vmcore.Result
	delivered.Status.Conditions.Set(vmcore.Condition{Type: vmcore.FilesInSync, Status: vmcore.True}, f.now)
	f.r.requests(context.Background(), vm, delivered, vmcore.Spec{Name: "vm1"}, store, vmcore.Deps{})
	if vm.Status.OnboardRequest != "t1" || onboardPending(vm) {
		t.Errorf("onboarding not recorded: %+v", vm.Status)
	}
	if vm.Status.RenewRequest != "" || vm.Status.TokenRotatedAt != nil {
		t.Errorf("a renewal acted on while the VM is not in the mesh: %+v", vm.Status)
	}
	if ev := strings.Join(f.drainEvents(), "\n"); !strings.Contains(ev, ReasonOnboarded) {
		t.Errorf("no Onboarded event: %s", ev)
	}
	vm.Annotations[v1alpha1.AnnotationOnboard] = "t2"
	if !onboardPending(vm) {
		t.Error("a second request (a new value) is not pending")
	}
}

// An onboarding that asks for the sidecar restarted (vm onboard --restart)
// makes the pass restart it (the core's spec.Restart, as hostctl's own
// vm onboard --restart) and is recorded only once the pass did.
func TestOnboardRestartRecordedOnceRestarted(t *testing.T) {
	asked := "t1" + v1alpha1.OnboardRestart
	vm := meshVM("vm1", func(m *v1alpha1.MeshVM) { m.Annotations = map[string]string{v1alpha1.AnnotationOnboard: asked} })
	if !restartPending(vm) {
		t.Fatal("a restart request does not make the pass restart the sidecar")
	}
	f := newFixture(t, vm)
	store := fleetstore.New(context.Background(), f.kube, "", "vmns")
	var delivered vmcore.Result
	delivered.Status.Conditions.Set(vmcore.Condition{Type: vmcore.FilesInSync, Status: vmcore.True}, f.now)
	f.r.requests(context.Background(), vm, delivered, vmcore.Spec{Name: "vm1"}, store, vmcore.Deps{})
	if vm.Status.OnboardRequest != "" || !onboardPending(vm) {
		t.Fatalf("a restart request recorded though the pass did not restart the sidecar: %+v", vm.Status)
	}
	delivered.Status.Conditions.Set(vmcore.Condition{Type: vmcore.SidecarRunning, Status: vmcore.True, Reason: vmcore.SidecarRestarted}, f.now)
	f.r.requests(context.Background(), vm, delivered, vmcore.Spec{Name: "vm1"}, store, vmcore.Deps{})
	if vm.Status.OnboardRequest != asked {
		t.Errorf("the pass restarted the sidecar, but the request is not recorded: %+v", vm.Status)
	}
}
