package main

import (
	"context"
	"fmt"
	"time"

	"k8s.io/apimachinery/pkg/labels"

	clientnetworking "istio.io/client-go/pkg/apis/networking/v1"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	istioinformers "istio.io/client-go/pkg/informers/externalversions"
)

// entriesFromInformer serves the core's WorkloadEntry lookups from an
// informer on namespace ns, through the hook the controller fills from its
// own cache (workload.Clients.EntriesAt): the -entry-cache variant, which
// shows what the core's LIST of every entry per lookup costs. It hands out
// the namespace's entries; the core picks the one at the address.
func entriesFromInformer(ctx context.Context, ic istioclient.Interface, ns string) (func(context.Context, string, string) ([]*clientnetworking.WorkloadEntry, error), error) {
	f := istioinformers.NewSharedInformerFactoryWithOptions(ic, 0, istioinformers.WithNamespace(ns))
	inf := f.Networking().V1().WorkloadEntries()
	lister := inf.Lister()
	inf.Informer() // registered before Start
	f.Start(ctx.Done())
	sctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for typ, ok := range f.WaitForCacheSync(sctx.Done()) {
		if !ok {
			return nil, fmt.Errorf("informer of %v never synced", typ)
		}
	}
	return func(_ context.Context, namespace, _ string) ([]*clientnetworking.WorkloadEntry, error) {
		return lister.WorkloadEntries(namespace).List(labels.Everything())
	}, nil
}
