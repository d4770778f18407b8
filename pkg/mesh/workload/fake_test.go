package workload

import (
	"context"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"
	istiometa "istio.io/api/meta/v1alpha1"
	clientnetworking "istio.io/client-go/pkg/apis/networking/v1"
	istiofake "istio.io/client-go/pkg/clientset/versioned/fake"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

// Ensure and Remove on fake clients, judged as the lab test judges them:
// every object reported, so an empty result cannot pass.
func TestEnsureAndRemoveReportEveryObject(t *testing.T) {
	ctx := context.Background()
	c := Clients{Kube: fake.NewClientset(), Istio: istiofake.NewSimpleClientset()}
	first, err := Ensure(ctx, c, recipe)
	wantActions(t, "first Ensure", first, err, "created")
	second, err := Ensure(ctx, c, recipe)
	wantActions(t, "second Ensure", second, err, "unchanged")
	gone, err := Remove(ctx, c, recipe)
	wantActions(t, "Remove", gone, err, "deleted")
	again, err := Remove(ctx, c, recipe)
	wantActions(t, "Remove again", again, err, "absent")
}

func healthyEntry(name, address, connectedAt string, probed time.Time) *clientnetworking.WorkloadEntry {
	we := &clientnetworking.WorkloadEntry{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: recipe.Namespace,
		Annotations: map[string]string{"istio.io/autoRegistrationGroup": recipe.Group, "istio.io/connectedAt": connectedAt}}}
	we.Spec.Address = address
	we.Status.Conditions = []*istiometa.IstioCondition{{Type: "Healthy", Status: "True", LastProbeTime: timestamppb.New(probed)}}
	return we
}

// EntryChanges signals a change made after it started, and stops with ctx.
func TestEntryChangesSignalsAChange(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c := Clients{Kube: fake.NewClientset(), Istio: istiofake.NewSimpleClientset()}
	changes := EntryChanges(ctx, c, recipe)
	select {
	case <-changes:
		t.Fatal("a change signalled before any was made")
	case <-time.After(200 * time.Millisecond):
	}
	if _, err := c.Istio.NetworkingV1().WorkloadEntries(recipe.Namespace).Create(ctx, healthyEntry("e1", "10.0.0.2", "t1", time.Now()), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-changes:
	case <-ctx.Done():
		t.Fatal("no signal after an entry was created")
	}
}
