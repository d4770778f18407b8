package main

import (
	"context"
	"fmt"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	clientnetworking "istio.io/client-go/pkg/apis/networking/v1"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	typednetworking "istio.io/client-go/pkg/clientset/versioned/typed/networking/v1"
	istioinformers "istio.io/client-go/pkg/informers/externalversions"
	listers "istio.io/client-go/pkg/listers/networking/v1"
)

// cachedEntries serves WorkloadEntry lists from an informer, as a
// controller-runtime cached client would, and everything else from ic: the
// -entry-cache variant, which shows what the core's per-pass LIST of every
// entry costs.
func cachedEntries(ctx context.Context, ic istioclient.Interface, ns string) (istioclient.Interface, error) {
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
	return cachedIstio{Interface: ic, lister: lister}, nil
}

type cachedIstio struct {
	istioclient.Interface
	lister listers.WorkloadEntryLister
}

func (c cachedIstio) NetworkingV1() typednetworking.NetworkingV1Interface {
	return cachedNetworking{NetworkingV1Interface: c.Interface.NetworkingV1(), lister: c.lister}
}

type cachedNetworking struct {
	typednetworking.NetworkingV1Interface
	lister listers.WorkloadEntryLister
}

func (c cachedNetworking) WorkloadEntries(ns string) typednetworking.WorkloadEntryInterface {
	return cachedWorkloadEntries{WorkloadEntryInterface: c.NetworkingV1Interface.WorkloadEntries(ns), lister: c.lister.WorkloadEntries(ns)}
}

type cachedWorkloadEntries struct {
	typednetworking.WorkloadEntryInterface
	lister listers.WorkloadEntryNamespaceLister
}

func (c cachedWorkloadEntries) List(_ context.Context, opts metav1.ListOptions) (*clientnetworking.WorkloadEntryList, error) {
	sel, err := labels.Parse(opts.LabelSelector)
	if err != nil {
		return nil, err
	}
	items, err := c.lister.List(sel)
	if err != nil {
		return nil, err
	}
	out := &clientnetworking.WorkloadEntryList{}
	for _, we := range items {
		out.Items = append(out.Items, we.DeepCopy())
	}
	return out, nil
}
