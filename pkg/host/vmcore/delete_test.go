package vmcore

import (
	"testing"
	"time"

	istiofake "istio.io/client-go/pkg/clientset/versioned/fake"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/meshvm/meshvm/pkg/machine"
	"github.com/meshvm/meshvm/pkg/mesh/workload"
)

// Deleting a stopped VM (no address) finds its entry where it was last
// onboarded and revokes its token; a second Delete finds nothing left.
func TestDeleteTakesEntryAndTokenEvenOfAStoppedVM(t *testing.T) {
	ctx := testCtx(t)
	store, _ := openStore(t, "vm1")
	if err := store.SetAddress("vm1", "10.0.0.7"); err != nil {
		t.Fatal(err)
	}
	kc := fake.NewClientset(&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: workload.CredentialName("vm1"), Namespace: group.Namespace,
		Labels: map[string]string{"app.kubernetes.io/managed-by": "meshvm"}}})
	ic := istiofake.NewSimpleClientset(entryAt("external-app-10.0.0.7", "10.0.0.7", "c1", "True", time.Now()),
		entryAt("external-app-10.0.0.8", "10.0.0.8", "c1", "True", time.Now()))
	deps := Deps{Kube: workload.Clients{Kube: kc, Istio: ic}, Workload: group}
	stopped := machine.Machine{Name: "vm1", State: machine.Stopped}

	r, err := Delete(ctx, "vm1", stopped, false, store, deps)
	if err != nil {
		t.Fatal(err)
	}
	if r != (Removal{EntryAddress: "10.0.0.7", Entry: "external-app-10.0.0.7", Revoked: true}) {
		t.Errorf("got %+v", r)
	}
	if _, err := kc.CoreV1().Secrets(group.Namespace).Get(ctx, workload.CredentialName("vm1"), metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("credential Secret: got %v, want it deleted", err)
	}
	if _, err := ic.NetworkingV1().WorkloadEntries(group.Namespace).Get(ctx, "external-app-10.0.0.8", metav1.GetOptions{}); err != nil {
		t.Errorf("another VM's entry: %v, want it kept", err)
	}
	again, err := Delete(ctx, "vm1", stopped, false, store, deps)
	if err != nil || again != (Removal{EntryAddress: "10.0.0.7"}) {
		t.Errorf("second Delete: got %+v %v, want nothing found", again, err)
	}
	never, _ := openStore(t, "vm2")
	if r, err := Delete(ctx, "vm2", machine.Machine{Name: "vm2"}, false, never, deps); err != nil || r != (Removal{}) {
		t.Errorf("a VM never onboarded: got %+v %v, want no address looked at", r, err)
	}
}
