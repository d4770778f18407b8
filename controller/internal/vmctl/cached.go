package vmctl

import (
	"context"
	"slices"

	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	istionetworkingv1 "istio.io/client-go/pkg/clientset/versioned/typed/networking/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/client-go/kubernetes"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshvm/meshvm/api/meshvm/v1alpha1"
	"github.com/meshvm/meshvm/pkg/fleetstore"
	"github.com/meshvm/meshvm/pkg/mesh/ownership"
)

// RootCertConfigMap is the ConfigMap istiod publishes its root certificate
// in, in every namespace.
const RootCertConfigMap = "istio-ca-root-cert"

// Scope is what the controller's informer cache holds besides MeshVMs and
// WorkloadEntries: the shared objects every pass reads, which change
// seldom (read at each pass from the API server they were most of a
// pass's requests), and no Secret outside the store.
type Scope struct {
	// Namespace is the store's: its ConfigMaps (the fleet settings) and
	// its Secrets labelled managed-by meshvm (the agent CA, the
	// controller's identity, the VMs' records).
	Namespace string
	// IstioNamespace is istiod's: its ConfigMaps (the mesh config).
	IstioNamespace string
	// WorkloadNamespaces hold MeshVMs: their root certificate ConfigMap
	// only. None: every namespace's (a cluster-wide list limited by name).
	WorkloadNamespaces []string
}

// CacheOptions is the manager's cache: MeshVMs, WorkloadEntries and
// WorkloadGroups everywhere, and the objects of s, scoped to their
// namespaces, names and labels.
func (s Scope) CacheOptions() cache.Options {
	cms := map[string]cache.Config{s.Namespace: {}, s.IstioNamespace: {}}
	root := cache.Config{FieldSelector: fields.OneTermEqualSelector("metadata.name", RootCertConfigMap)}
	if len(s.WorkloadNamespaces) == 0 {
		cms[cache.AllNamespaces] = root
	}
	for _, ns := range s.WorkloadNamespaces {
		if _, ok := cms[ns]; !ok {
			cms[ns] = root
		}
	}
	return cache.Options{
		// Nothing reads who wrote which field: a MeshVM's and an entry's
		// managedFields are about as large as the rest of it.
		DefaultTransform: cache.TransformStripManagedFields(),
		ByObject: map[client.Object]cache.ByObject{
			&v1alpha1.MeshVM{}:            {},
			&networkingv1.WorkloadEntry{}: {},
			&networkingv1.WorkloadGroup{}: {},
			&corev1.ConfigMap{}:           {Namespaces: cms},
			&corev1.Secret{}:              {Namespaces: map[string]cache.Config{s.Namespace: {LabelSelector: storeSecrets()}}},
		}}
}

// storeSecrets selects the store's own Secrets (the agent CA, the
// controller's identity): labelled managed-by meshvm, not a VM's records
// (labelled with the VM), which are read from the API server and would
// be a cached copy per VM (tokens, joins: most of the store's bytes).
func storeSecrets() labels.Selector {
	notVM, err := labels.NewRequirement(ownership.VMLabel, selection.DoesNotExist, nil)
	if err != nil {
		panic(err) // a constant key
	}
	return labels.SelectorFromSet(ownership.Labels(nil)).Add(*notVM)
}

// cachedConfigMap says whether the cache holds ConfigMap ns/name.
func (s Scope) cachedConfigMap(ns, name string) bool {
	switch {
	case ns == s.Namespace || ns == s.IstioNamespace:
		return true
	case name != RootCertConfigMap:
		return false
	}
	return len(s.WorkloadNamespaces) == 0 || slices.Contains(s.WorkloadNamespaces, ns)
}

// cachedSecret says whether the cache holds Secret ns/name: only the
// store's CA and the controller's identity are read from it. A VM's
// records are read from the API server once per pass: a record read from a
// cache that has not seen the last pass's write would redo that pass's
// work or fail its update on a conflict.
func (s Scope) cachedSecret(ns, name string) bool {
	return ns == s.Namespace && (name == fleetstore.CASecret || name == fleetstore.IdentitySecret)
}

// cachedKube is a clientset whose reads of the objects in scope come from
// the manager's cache; every other call goes to the API server.
type cachedKube struct {
	kubernetes.Interface
	cache client.Reader
	scope Scope
}

func (k cachedKube) CoreV1() corev1client.CoreV1Interface {
	return cachedCore{CoreV1Interface: k.Interface.CoreV1(), k: k}
}

type cachedCore struct {
	corev1client.CoreV1Interface
	k cachedKube
}

func (c cachedCore) ConfigMaps(ns string) corev1client.ConfigMapInterface {
	return cachedConfigMaps{ConfigMapInterface: c.CoreV1Interface.ConfigMaps(ns), ns: ns, k: c.k}
}

func (c cachedCore) Secrets(ns string) corev1client.SecretInterface {
	return cachedSecrets{SecretInterface: c.CoreV1Interface.Secrets(ns), ns: ns, k: c.k}
}

type cachedConfigMaps struct {
	corev1client.ConfigMapInterface
	ns string
	k  cachedKube
}

func (c cachedConfigMaps) Get(ctx context.Context, name string, opts metav1.GetOptions) (*corev1.ConfigMap, error) {
	if !c.k.scope.cachedConfigMap(c.ns, name) {
		return c.ConfigMapInterface.Get(ctx, name, opts)
	}
	return fromCache[corev1.ConfigMap](ctx, c.k.cache, c.ns, name)
}

type cachedSecrets struct {
	corev1client.SecretInterface
	ns string
	k  cachedKube
}

func (c cachedSecrets) Get(ctx context.Context, name string, opts metav1.GetOptions) (*corev1.Secret, error) {
	if !c.k.scope.cachedSecret(c.ns, name) {
		return c.SecretInterface.Get(ctx, name, opts)
	}
	return fromCache[corev1.Secret](ctx, c.k.cache, c.ns, name)
}

// cachedIstio reads WorkloadGroups from the manager's cache.
type cachedIstio struct {
	istioclient.Interface
	cache client.Reader
}

func (i cachedIstio) NetworkingV1() istionetworkingv1.NetworkingV1Interface {
	return cachedNetworking{NetworkingV1Interface: i.Interface.NetworkingV1(), cache: i.cache}
}

type cachedNetworking struct {
	istionetworkingv1.NetworkingV1Interface
	cache client.Reader
}

func (n cachedNetworking) WorkloadGroups(ns string) istionetworkingv1.WorkloadGroupInterface {
	return cachedGroups{WorkloadGroupInterface: n.NetworkingV1Interface.WorkloadGroups(ns), ns: ns, cache: n.cache}
}

type cachedGroups struct {
	istionetworkingv1.WorkloadGroupInterface
	ns    string
	cache client.Reader
}

func (g cachedGroups) Get(ctx context.Context, name string, _ metav1.GetOptions) (*networkingv1.WorkloadGroup, error) {
	return fromCache[networkingv1.WorkloadGroup](ctx, g.cache, g.ns, name)
}

// fromCache is object ns/name of type T as the cache holds it (a copy).
func fromCache[T any, P interface {
	*T
	client.Object
}](ctx context.Context, c client.Reader, ns, name string) (P, error) {
	obj := P(new(T))
	if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, obj); err != nil {
		return nil, err
	}
	return obj, nil
}
