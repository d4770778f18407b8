package workload

import (
	"context"
	"testing"

	istiofake "istio.io/client-go/pkg/clientset/versioned/fake"
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
