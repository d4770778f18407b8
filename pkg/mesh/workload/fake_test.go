package workload

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"
	istiometa "istio.io/api/meta/v1alpha1"
	clientnetworking "istio.io/client-go/pkg/apis/networking/v1"
	istiofake "istio.io/client-go/pkg/clientset/versioned/fake"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
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

// WaitHealthy follows the watch: an entry that turns up Healthy later ends
// the wait; none names what is missing; a list the API refuses ends it at once.
func TestWaitHealthyOnFakeClients(t *testing.T) {
	ctx := context.Background()
	c := Clients{Kube: fake.NewClientset(), Istio: istiofake.NewSimpleClientset()}
	go func() {
		time.Sleep(300 * time.Millisecond)
		c.Istio.NetworkingV1().WorkloadEntries(recipe.Namespace).Create(ctx, healthyEntry("external-app-10.0.0.2", "10.0.0.2", "t1", time.Now()), metav1.CreateOptions{})
	}()
	e, err := WaitHealthy(ctx, c, recipe, "10.0.0.2", 10*time.Second, Entry{})
	if err != nil || e.Name != "external-app-10.0.0.2" || e.Healthy != "True" {
		t.Fatalf("got %+v, %v, want the entry once it is Healthy", e, err)
	}
	// After a restart the same connection's entry is stale: not done.
	_, err = WaitHealthy(ctx, c, recipe, "10.0.0.2", time.Second, e)
	if err == nil || !strings.Contains(err.Error(), "has not reconnected") {
		t.Errorf("stale entry: got %v, want the restarted sidecar named", err)
	}
	_, err = WaitHealthy(ctx, c, recipe, "10.0.0.9", time.Second, Entry{})
	if err == nil || !strings.Contains(err.Error(), "no WorkloadEntry for 10.0.0.9") {
		t.Errorf("no entry: got %v", err)
	}

	refused := istiofake.NewSimpleClientset()
	refused.PrependReactor("list", "workloadentries", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewForbidden(clientnetworking.Resource("workloadentries"), "", nil)
	})
	start := time.Now()
	_, err = WaitHealthy(ctx, Clients{Istio: refused}, recipe, "10.0.0.2", 30*time.Second, Entry{})
	if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "list WorkloadEntries in vmns") || time.Since(start) > 10*time.Second {
		t.Errorf("refused list: got %v after %s, want the Forbidden at once", err, time.Since(start))
	}
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
