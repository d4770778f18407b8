package fleetmode

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/meshvm/meshvm/api/meshvm/v1alpha1"
	"github.com/meshvm/meshvm/lab/cluster/clustertest"
	"github.com/meshvm/meshvm/pkg/mesh/ownership"
	"github.com/meshvm/meshvm/pkg/mesh/workload"
	"github.com/meshvm/meshvm/pkg/reason"
)

// hostctl's side of fleet mode on a real API server (the CRD's schema,
// server-side apply, merge patches, finalizers): declaring is idempotent
// and leaves others' MeshVMs alone; a request is an annotation the
// controller's status answers; a delete waits for the finalizer.
func TestMeshVMsOnTheAPIServer(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	rc, _ := clustertest.Start(ctx, t)
	dc := dynamic.NewForConfigOrDie(rc)
	kc := kubernetes.NewForConfigOrDie(rc)
	if _, err := ApplyCRD(ctx, dc); err != nil {
		t.Fatal(err)
	}
	kc.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "vmns"}}, metav1.CreateOptions{})
	api := dc.Resource(MeshVMs).Namespace("vmns")
	a := Adoption{Dynamic: dc, Workload: workload.Spec{Namespace: "vmns", Group: "app", Network: "vm-network"}, TokenLifetime: time.Hour}

	// Declare: created, then unchanged, then configured when the address moves.
	vm := VM{Name: "vm1", RunsApp: true, IstiodAddress: "10.0.0.1"}
	for i, want := range []ownership.Action{ownership.Created, ownership.Unchanged} {
		if got, err := a.apply(ctx, vm, "10.1.0.1", ""); err != nil || got != want {
			t.Fatalf("apply %d: %v %v, want %s", i, got, err, want)
		}
	}
	// A revision another hand set (vm upgrade, kubectl) is kept.
	if _, err := api.Patch(ctx, "vm1", "application/merge-patch+json", []byte(`{"spec":{"revision":"canary"}}`), metav1.PatchOptions{FieldManager: "kubectl"}); err != nil {
		t.Fatal(err)
	}
	if got, err := a.apply(ctx, vm, "10.1.0.2", ""); err != nil || got != ownership.Configured {
		t.Fatalf("apply with a new address: %v %v, want configured", got, err)
	}
	m := meshVM(t, api, "vm1")
	if m.Spec.Address != "10.1.0.2" || m.Spec.Revision != "canary" || m.Annotations[v1alpha1.AnnotationIstiodAddress] != "10.0.0.1" || !ownership.Owned(m) {
		t.Errorf("declared: %+v %+v", m.ObjectMeta, m.Spec)
	}

	// An address someone unpinned (to have the controller follow the VM)
	// stays unpinned.
	if _, err := api.Patch(ctx, "vm1", "application/merge-patch+json", []byte(`{"spec":{"address":null}}`), metav1.PatchOptions{FieldManager: "kubectl"}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.apply(ctx, vm, "10.1.0.2", ""); err != nil || meshVM(t, api, "vm1").Spec.Address != "" {
		t.Errorf("up's apply pinned an address someone removed: %v", err)
	}

	// Someone else's MeshVM: not declared over, not requested, not deleted.
	theirs := MeshVM(VM{Name: "theirs", RunsApp: true}, a.Workload, "10.1.0.9", "", 0, 0)
	theirs.Labels = nil
	create(t, api, theirs)
	if got, err := a.apply(ctx, VM{Name: "theirs"}, "10.1.0.3", ""); err != nil || got != ownership.Yours {
		t.Errorf("apply over theirs: %v %v", got, err)
	}
	if _, err := Request(ctx, dc, "vmns", []string{"theirs"}, v1alpha1.AnnotationRenew); err == nil || !strings.Contains(err.Error(), "not meshvm's") {
		t.Errorf("a request on theirs: %v", err)
	}
	var r *reason.Error
	if _, err := Request(ctx, dc, "vmns", []string{"nosuch"}, v1alpha1.AnnotationRenew); !errors.As(err, &r) || r.Reason != reason.NotDeclared {
		t.Errorf("a request on no MeshVM: %v, want NotDeclared", err)
	}

	// Revoke pauses once; onboarding resumes with a request.
	for i, want := range []bool{true, false} {
		if changed, err := Pause(ctx, dc, "vmns", "vm1"); err != nil || changed != want {
			t.Errorf("pause %d: %v %v, want %v", i, changed, err, want)
		}
	}
	value, err := Request(ctx, dc, "vmns", []string{"vm1"}, v1alpha1.AnnotationOnboard)
	if err != nil {
		t.Fatal(err)
	}
	m = meshVM(t, api, "vm1")
	if m.Spec.Paused || m.Annotations[v1alpha1.AnnotationOnboard] != value {
		t.Errorf("after an onboard request: paused %v, annotations %v", m.Spec.Paused, m.Annotations)
	}
	// up's apply does not undo a pause (it never declares spec.paused).
	Pause(ctx, dc, "vmns", "vm1")
	if _, err := a.apply(ctx, vm, "10.1.0.2", ""); err != nil || !meshVM(t, api, "vm1").Spec.Paused {
		t.Errorf("up's apply lifted the pause: %v", err)
	}
	Request(ctx, dc, "vmns", []string{"vm1"}, v1alpha1.AnnotationOnboard)

	// The wait ends when the status says the request was acted on, Ready.
	value, _ = Request(ctx, dc, "vmns", []string{"vm1"}, v1alpha1.AnnotationRenew)
	go func() {
		time.Sleep(time.Second)
		m := meshVM(t, api, "vm1")
		m.Status.RenewRequest = value
		m.Status.Conditions = []metav1.Condition{{Type: v1alpha1.ConditionReady, Status: metav1.ConditionTrue, Reason: "InMesh", Message: "Healthy",
			ObservedGeneration: m.Generation, LastTransitionTime: metav1.Now()}}
		obj, _ := runtime.DefaultUnstructuredConverter.ToUnstructured(m)
		if _, err := api.UpdateStatus(ctx, &unstructured.Unstructured{Object: obj}, metav1.UpdateOptions{}); err != nil {
			t.Error(err)
		}
	}()
	wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
	rows, err := WaitRequest(wctx, dc, "vmns", []string{"vm1"}, func(r Row) bool { return r.RenewRequest == value }, func(string, string, ...any) {})
	wcancel()
	if err != nil || len(rows) != 1 || rows[0].Ready != "True" {
		t.Fatalf("wait for the renewal: %v %+v", err, rows)
	}

	// Delete waits for the finalizer, which the "controller" here lifts.
	m = meshVM(t, api, "vm1")
	m.Finalizers = []string{v1alpha1.Finalizer}
	obj, _ := runtime.DefaultUnstructuredConverter.ToUnstructured(m)
	if _, err := api.Update(ctx, &unstructured.Unstructured{Object: obj}, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if ours, err := Ours(ctx, dc, "vmns"); err != nil || strings.Join(ours, ",") != "vm1" {
		t.Errorf("ours: %v %v, want vm1 only", ours, err)
	}
	go func() {
		time.Sleep(2 * time.Second)
		api.Patch(ctx, "vm1", "application/merge-patch+json", []byte(`{"metadata":{"finalizers":null}}`), metav1.PatchOptions{})
	}()
	var said []string
	say := func(format string, args ...any) { said = append(said, strings.TrimSpace(fmt.Sprintf(format, args...))) }
	begun := time.Now()
	if err := Delete(ctx, dc, "vmns", []string{"vm1", "theirs", "gone"}, say); err != nil {
		t.Fatal(err)
	}
	if time.Since(begun) < 2*time.Second {
		t.Errorf("Delete returned before the finalizer was lifted")
	}
	if _, err := api.Get(ctx, "vm1", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("vm1 left: %v", err)
	}
	if _, err := api.Get(ctx, "theirs", metav1.GetOptions{}); err != nil {
		t.Errorf("theirs deleted: %v", err)
	}
	all := strings.Join(said, "\n")
	for _, want := range []string{"MeshVM vmns/vm1 deleted", "MeshVM vmns/theirs: not meshvm's", "no MeshVM vmns/gone"} {
		if !strings.Contains(all, want) {
			t.Errorf("Delete said %q, want %q", all, want)
		}
	}
}

func meshVM(t *testing.T, api dynamic.ResourceInterface, name string) *v1alpha1.MeshVM {
	t.Helper()
	u, err := api.Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var m v1alpha1.MeshVM
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &m); err != nil {
		t.Fatal(err)
	}
	return &m
}

func create(t *testing.T, api dynamic.ResourceInterface, m *v1alpha1.MeshVM) {
	t.Helper()
	obj, err := runtime.DefaultUnstructuredConverter.ToUnstructured(m)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := api.Create(context.Background(), &unstructured.Unstructured{Object: obj}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}
