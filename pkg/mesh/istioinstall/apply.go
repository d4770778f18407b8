package istioinstall

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"

	"github.com/meshvm/meshvm/pkg/mesh/ownership"
)

// FieldManager names meshvm's server-side applies.
const FieldManager = ownership.FieldManager

// Change is what applying did to one object: created, configured,
// unchanged, skipped (Why says why), or Yours.
type Change struct {
	Ref    string
	Action ownership.Action
	Why    string
}

// Yours is the action on an object of the render that exists and meshvm did
// not make (another installer's): it is neither applied over nor deleted.
const Yours = ownership.Foreign

// Keep decides whether an object is applied, and if not, why.
type Keep func(Object) (bool, string)

// Everything applies every rendered object: a real cluster.
func Everything(Object) (bool, string) { return true, "" }

// LabRunnable keeps what a cluster without kubelet or pod network can hold
// and use: no workloads (the lab runs istiod as a process) and no webhooks
// (the API server could not call them).
func LabRunnable(o Object) (bool, string) {
	switch o.GetKind() {
	case "Deployment", "DaemonSet", "HorizontalPodAutoscaler", "PodDisruptionBudget":
		return false, "the lab has no kubelet to run pods"
	case "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration":
		return false, "the lab's API server cannot reach webhooks served by pods"
	}
	return true, ""
}

var crdGVR = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// Apply server-side applies the objects keep accepts, in order, waiting for
// CRDs to be established before the objects that use them. Re-applying an
// unchanged render changes nothing and reports so.
func Apply(ctx context.Context, rc *rest.Config, objs []Object, keep Keep) ([]Change, error) {
	dyn, mapper, err := clients(rc)
	if err != nil {
		return nil, err
	}
	done := make([]Change, len(objs))
	for _, tier := range tiers(objs) {
		// One tier's objects do not depend on each other: apply them at
		// once (a re-apply of ~40 objects one by one takes seconds).
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(applyConcurrency)
		var crds []string
		for _, i := range tier {
			o := objs[i]
			if ok, why := keep(o); !ok {
				done[i] = Change{Ref: o.Ref(), Action: ownership.Skipped, Why: why}
				continue
			}
			if o.GetKind() == "CustomResourceDefinition" {
				crds = append(crds, o.GetName())
			}
			g.Go(func() error {
				action, err := applyOne(gctx, dyn, mapper, o)
				if err == nil {
					done[i] = Change{Ref: o.Ref(), Action: action}
				}
				return err
			})
		}
		if err := g.Wait(); err != nil {
			return applied(done), err
		}
		if len(crds) > 0 {
			// What follows may be of these kinds: wait until they serve.
			if err := waitEstablished(ctx, dyn, crds); err != nil {
				return applied(done), err
			}
			mapper.Reset()
		}
	}
	return done, nil
}

// applyConcurrency bounds the requests one apply has in flight.
const applyConcurrency = 8

// tiers groups the objects' indexes by applyOrder, first tier first.
func tiers(objs []Object) [][]int {
	byRank := map[int][]int{}
	for i, o := range objs {
		r := applyOrder(o)
		byRank[r] = append(byRank[r], i)
	}
	ranks := slices.Sorted(maps.Keys(byRank))
	out := make([][]int, 0, len(ranks))
	for _, r := range ranks {
		out = append(out, byRank[r])
	}
	return out
}

// applied is what an interrupted apply got to, in render order.
func applied(done []Change) []Change {
	var out []Change
	for _, c := range done {
		if c.Ref != "" {
			out = append(out, c)
		}
	}
	return out
}

// resource is the API endpoint of o's kind, in o's namespace if it has one.
func resource(dyn dynamic.Interface, mapper meta.RESTMapper, o Object) (dynamic.ResourceInterface, error) {
	gvk := o.GroupVersionKind()
	m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		return nil, err
	}
	if m.Scope.Name() == meta.RESTScopeNameNamespace {
		return dyn.Resource(m.Resource).Namespace(o.GetNamespace()), nil
	}
	return dyn.Resource(m.Resource), nil
}

// Check reports, without changing anything, which of the objects keep
// accepts exist in the cluster: present, missing, or skipped (with why).
func Check(ctx context.Context, rc *rest.Config, objs []Object, keep Keep) ([]Change, error) {
	dyn, mapper, err := clients(rc)
	if err != nil {
		return nil, err
	}
	var out []Change
	for _, o := range objs {
		if ok, why := keep(o); !ok {
			out = append(out, Change{Ref: o.Ref(), Action: ownership.Skipped, Why: why})
			continue
		}
		action := ownership.Present
		ri, err := resource(dyn, mapper, o)
		if err == nil {
			_, err = ri.Get(ctx, o.GetName(), metav1.GetOptions{})
		}
		switch {
		case meta.IsNoMatchError(err) || apierrors.IsNotFound(err):
			action = ownership.Missing
		case err != nil:
			return out, fmt.Errorf("get %s: %w", o.Ref(), err)
		}
		out = append(out, Change{Ref: o.Ref(), Action: action})
	}
	return out, nil
}

func clients(rc *rest.Config) (dynamic.Interface, *restmapper.DeferredDiscoveryRESTMapper, error) {
	// client-go's default 5 requests/s would make a re-apply of ~40 objects
	// (a get and an apply each) take 15 s.
	rc = rest.CopyConfig(rc)
	rc.QPS, rc.Burst = 100, 200
	dc, err := discovery.NewDiscoveryClientForConfig(rc)
	if err != nil {
		return nil, nil, err
	}
	dyn, err := dynamic.NewForConfig(rc)
	if err != nil {
		return nil, nil, err
	}
	return dyn, restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc)), nil
}

func applyOne(ctx context.Context, dyn dynamic.Interface, mapper meta.RESTMapper, o Object) (ownership.Action, error) {
	ri, err := resource(dyn, mapper, o)
	if err != nil {
		return "", fmt.Errorf("apply %s: %w", o.Ref(), err)
	}
	before := ""
	cur, err := ri.Get(ctx, o.GetName(), metav1.GetOptions{})
	switch {
	case err == nil && !ownership.Owned(cur):
		return Yours, nil // another installer's: never applied over
	case err == nil:
		before = cur.GetResourceVersion()
	case !apierrors.IsNotFound(err):
		return "", fmt.Errorf("get %s: %w", o.Ref(), err)
	}
	after, err := ri.Apply(ctx, o.GetName(), o.Unstructured, metav1.ApplyOptions{FieldManager: FieldManager, Force: true})
	if err != nil {
		return "", fmt.Errorf("apply %s: %w", o.Ref(), err)
	}
	switch {
	case before == "":
		return ownership.Created, nil
	case after.GetResourceVersion() != before && !sameContent(cur, after):
		return ownership.Configured, nil
	}
	return ownership.Unchanged, nil
}

// sameContent says whether two versions of an object differ only in what
// others write beside an apply: its status (a Deployment's, written by its
// controller between our read and our apply, moves the resourceVersion
// without our apply changing anything) and the bookkeeping of versions.
func sameContent(a, b *unstructured.Unstructured) bool {
	strip := func(u *unstructured.Unstructured) map[string]any {
		c := u.DeepCopy().Object
		delete(c, "status")
		if md, ok := c["metadata"].(map[string]any); ok {
			delete(md, "resourceVersion")
			delete(md, "managedFields")
		}
		return c
	}
	return equality.Semantic.DeepEqual(strip(a), strip(b))
}

func waitEstablished(ctx context.Context, dyn dynamic.Interface, names []string) error {
	deadline := time.Now().Add(time.Minute)
	for _, name := range names {
		for {
			crd, err := dyn.Resource(crdGVR).Get(ctx, name, metav1.GetOptions{})
			if err == nil && established(crd) {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("CRD %s not established after a minute (%v): check the API server's log", name, err)
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	return nil
}

func established(crd *unstructured.Unstructured) bool {
	conds, _, _ := unstructured.NestedSlice(crd.Object, "status", "conditions")
	for _, c := range conds {
		cm, _ := c.(map[string]any)
		if cm["type"] == "Established" && cm["status"] == "True" {
			return true
		}
	}
	return false
}

// Summary counts the changes by action, for one progress line.
func Summary(changes []Change) string {
	n := map[ownership.Action]int{}
	for _, c := range changes {
		n[c.Action]++
	}
	order := []ownership.Action{ownership.Created, ownership.Configured, ownership.Unchanged, ownership.Skipped}
	switch {
	case n[ownership.Present]+n[ownership.Missing] > 0:
		order = []ownership.Action{ownership.Present, ownership.Missing, ownership.Skipped}
	case n[ownership.Deleted]+n[ownership.Absent]+n[ownership.Kept] > 0:
		order = []ownership.Action{ownership.Deleted, ownership.Absent, ownership.Kept, ownership.Skipped}
	}
	if n[Yours] > 0 {
		order = append(order, Yours)
	}
	parts := make([]string, len(order))
	for i, a := range order {
		parts[i] = fmt.Sprintf("%d %s", n[a], a)
	}
	return strings.Join(parts, ", ")
}

// Uninstall deletes the objects keep accepts, newest first, except the
// CustomResourceDefinitions: deleting those would delete every Istio
// resource in the cluster, ours or not. Objects already gone are fine.
func Uninstall(ctx context.Context, rc *rest.Config, objs []Object, keep Keep) ([]Change, error) {
	dyn, mapper, err := clients(rc)
	if err != nil {
		return nil, err
	}
	var out []Change
	for i := len(objs) - 1; i >= 0; i-- {
		o := objs[i]
		if ok, why := keep(o); !ok {
			out = append(out, Change{Ref: o.Ref(), Action: ownership.Skipped, Why: why})
			continue
		}
		if o.GetKind() == "CustomResourceDefinition" {
			out = append(out, Change{Ref: o.Ref(), Action: ownership.Kept, Why: "other Istio resources may use it"})
			continue
		}
		action := ownership.Deleted
		ri, err := resource(dyn, mapper, o)
		var cur *unstructured.Unstructured
		if err == nil {
			cur, err = ri.Get(ctx, o.GetName(), metav1.GetOptions{})
		}
		if err == nil && !ownership.Owned(cur) {
			out = append(out, Change{Ref: o.Ref(), Action: Yours, Why: string(ownership.Yours)})
			continue
		}
		if err == nil {
			uid := cur.GetUID()
			err = ri.Delete(ctx, o.GetName(), metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}})
		}
		switch {
		case meta.IsNoMatchError(err) || apierrors.IsNotFound(err):
			action = ownership.Absent
		case err != nil:
			return out, fmt.Errorf("delete %s: %w", o.Ref(), err)
		}
		out = append(out, Change{Ref: o.Ref(), Action: action})
	}
	return out, nil
}
