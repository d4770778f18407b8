// Package workload is the cluster side of a VM workload: its namespace,
// service account, WorkloadGroup and Service, and the inputs of its
// workload files (mesh config, root certificate, a fresh token), read with
// client-go and istio.io/client-go. Every step converges: objects that exist
// are updated only where they differ.
package workload

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	networking "istio.io/api/networking/v1alpha3"
	clientnetworking "istio.io/client-go/pkg/apis/networking/v1"
	istioclient "istio.io/client-go/pkg/clientset/versioned"

	"github.com/meshvm/meshvm/pkg/mesh/ownership"
	"github.com/meshvm/meshvm/pkg/mesh/workloadfiles"

	"github.com/meshvm/meshvm/pkg/reason"
)

// Spec is the workload, with the recipe's names by default.
type Spec struct {
	Namespace, ServiceAccount, Group string
	Port                             int
	PortName                         string
	Network                          string
	ProbePath                        string
	ProbePort                        int
	ProbePeriod, ProbeInitialDelay   int32
	// CertificateLifetime is the workload certificate's lifetime pilot-agent
	// asks istiod for (SECRET_TTL); zero leaves Istio's default (24 h).
	CertificateLifetime time.Duration
	// Revision labels the WorkloadGroup istio.io/rev when all its VMs are
	// on that revision; "" leaves it unlabelled. istiod ignores objects
	// labelled for another revision (Istio's LabelsInRevision), so while
	// VMs are split between revisions the group must carry none, or the
	// VMs on the other one could not register.
	Revision string
}

// proxyConfigAnnotation carries ProxyConfig overrides to the VM's mesh.yaml
// and cluster.env (istioctl merges it from the WorkloadGroup).
const proxyConfigAnnotation = "proxy.istio.io/config"

// groupAnnotations are the WorkloadGroup's spec.metadata annotations: the
// certificate lifetime, when set, as proxy metadata. The VM's files carry it
// to pilot-agent; the mesh config stays as it is.
func groupAnnotations(s Spec) map[string]string {
	if s.CertificateLifetime <= 0 {
		return nil
	}
	return map[string]string{proxyConfigAnnotation: "proxyMetadata:\n  SECRET_TTL: " + s.CertificateLifetime.String() + "\n"}
}

// Clients are the APIs the workload needs.
type Clients struct {
	Kube  kubernetes.Interface
	Istio istioclient.Interface
	// EntriesAt, when set, are a namespace's WorkloadEntries at one
	// address, from an index (a controller's informer cache): FindEntry
	// then lists nothing from the API server, which at a thousand VMs
	// would be a thousand entries read per lookup. Unset (hostctl), it
	// lists the namespace.
	EntriesAt func(ctx context.Context, namespace, address string) ([]*clientnetworking.WorkloadEntry, error)
}

// Change reports one object's fate.
type Change struct {
	Object string // e.g. "WorkloadGroup vmns/external-app"
	// Action is created, updated, unchanged, deleted or absent; Yours for
	// an object meshvm did not create.
	Action ownership.Action
}

// Ensure converges the namespace, service account, WorkloadGroup and Service.
func Ensure(ctx context.Context, c Clients, s Spec) ([]Change, error) {
	var out []Change
	add := func(obj string, action ownership.Action, err error) error {
		if err != nil {
			return fmt.Errorf("%s: %w", obj, err)
		}
		out = append(out, Change{obj, action})
		return nil
	}
	a, err := ensureNamespace(ctx, c.Kube, s.Namespace)
	if err := add("Namespace "+s.Namespace, a, err); err != nil {
		return out, err
	}
	a, err = ensureServiceAccount(ctx, c.Kube, s)
	if err := add("ServiceAccount "+s.Namespace+"/"+s.ServiceAccount, a, err); err != nil {
		return out, err
	}
	a, err = ensureGroup(ctx, c.Istio, s)
	if err := add("WorkloadGroup "+s.Namespace+"/"+s.Group, a, err); err != nil {
		return out, err
	}
	a, err = ensureService(ctx, c.Kube, s)
	if err := add("Service "+s.Namespace+"/"+s.Group, a, err); err != nil {
		return out, err
	}
	return out, nil
}

// Remove deletes what Ensure created and nothing else: the WorkloadGroup
// (istiod's entries for it go with it, their owner), the Service and the
// service account when they carry meshvm's label, then the namespace when
// meshvm created it. A namespace of yours stays, with everything in it that
// is not meshvm's.
func Remove(ctx context.Context, c Clients, s Spec) ([]Change, error) {
	ns := s.Namespace
	groups, svcs, sas := c.Istio.NetworkingV1().WorkloadGroups(ns), c.Kube.CoreV1().Services(ns), c.Kube.CoreV1().ServiceAccounts(ns)
	var out []Change
	for _, step := range []func() (Change, error){
		func() (Change, error) {
			return removeOwned(ctx, "WorkloadGroup "+ns+"/"+s.Group, s.Group, groups.Get, groups.Delete)
		},
		func() (Change, error) {
			return removeOwned(ctx, "Service "+ns+"/"+s.Group, s.Group, svcs.Get, svcs.Delete)
		},
		func() (Change, error) {
			return removeOwned(ctx, "ServiceAccount "+ns+"/"+s.ServiceAccount, s.ServiceAccount, sas.Get, sas.Delete)
		},
		func() (Change, error) { return RemoveNamespace(ctx, c.Kube, ns) },
	} {
		ch, err := step()
		if err != nil {
			return out, err
		}
		out = append(out, ch)
	}
	return out, nil
}

// RemoveNamespace deletes the namespace name if meshvm created it, with
// everything in it; one of yours stays.
func RemoveNamespace(ctx context.Context, kc kubernetes.Interface, name string) (Change, error) {
	nss := kc.CoreV1().Namespaces()
	return removeOwned(ctx, "Namespace "+name, name, nss.Get, nss.Delete)
}

// removeOwned deletes the object name (obj as progress names it) when meshvm
// owns it, and only that very object (its UID): deleted, absent, or Yours.
func removeOwned[T metav1.Object](ctx context.Context, obj, name string,
	get func(context.Context, string, metav1.GetOptions) (T, error),
	del func(context.Context, string, metav1.DeleteOptions) error) (Change, error) {
	m, err := get(ctx, name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return Change{obj, ownership.Absent}, nil
	case err != nil:
		return Change{}, fmt.Errorf("%s: %w", obj, err)
	case !ownership.Owned(m):
		return Change{obj, ownership.Yours}, nil
	}
	uid := m.GetUID()
	if err := del(ctx, name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}}); err != nil && !apierrors.IsNotFound(err) {
		return Change{}, fmt.Errorf("delete %s: %w", obj, err)
	}
	return Change{obj, ownership.Deleted}, nil
}

func ensureNamespace(ctx context.Context, kc kubernetes.Interface, name string) (ownership.Action, error) {
	_, err := kc.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: ownership.Labels(nil)}}, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		cur, err := kc.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{})
		return yoursOr(cur, err)
	}
	return createdOr(err)
}

func ensureServiceAccount(ctx context.Context, kc kubernetes.Interface, s Spec) (ownership.Action, error) {
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: s.ServiceAccount, Labels: ownership.Labels(nil)}}
	_, err := kc.CoreV1().ServiceAccounts(s.Namespace).Create(ctx, sa, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		cur, err := kc.CoreV1().ServiceAccounts(s.Namespace).Get(ctx, s.ServiceAccount, metav1.GetOptions{})
		return yoursOr(cur, err)
	}
	return createdOr(err)
}

// yoursOr is unchanged for an existing object meshvm created, Yours for
// one it did not.
func yoursOr(m metav1.Object, err error) (ownership.Action, error) {
	switch {
	case err != nil:
		return "", err
	case ownership.Owned(m):
		return ownership.Unchanged, nil
	}
	return ownership.Yours, nil
}

func createdOr(err error) (ownership.Action, error) {
	switch {
	case err == nil:
		return ownership.Created, nil
	case apierrors.IsAlreadyExists(err):
		return ownership.Unchanged, nil
	}
	return "", err
}

// GroupSpec is the WorkloadGroup the recipe creates.
func GroupSpec(s Spec) *networking.WorkloadGroup {
	return &networking.WorkloadGroup{
		Metadata: &networking.WorkloadGroup_ObjectMeta{Labels: map[string]string{"app": s.Group}, Annotations: groupAnnotations(s)},
		Template: &networking.WorkloadEntry{ServiceAccount: s.ServiceAccount, Network: s.Network, Ports: map[string]uint32{s.PortName: uint32(s.Port)}},
		Probe: &networking.ReadinessProbe{
			PeriodSeconds: s.ProbePeriod, InitialDelaySeconds: s.ProbeInitialDelay,
			HealthCheckMethod: &networking.ReadinessProbe_HttpGet{HttpGet: &networking.HTTPHealthCheckConfig{Path: s.ProbePath, Port: uint32(s.ProbePort)}},
		},
	}
}

func ensureGroup(ctx context.Context, ic istioclient.Interface, s Spec) (ownership.Action, error) {
	want := GroupSpec(s)
	groups := ic.NetworkingV1().WorkloadGroups(s.Namespace)
	cur, err := groups.Get(ctx, s.Group, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		wg := &clientnetworking.WorkloadGroup{ObjectMeta: metav1.ObjectMeta{Name: s.Group, Namespace: s.Namespace, Labels: ownership.Labels(nil)}}
		setRevision(&wg.ObjectMeta, s.Revision)
		proto.Merge(&wg.Spec, want)
		_, err = groups.Create(ctx, wg, metav1.CreateOptions{})
		return createdOr(err)
	}
	if err != nil {
		return "", err
	}
	if !ownership.Owned(cur) {
		return ownership.Yours, nil // the VMs join it with its template and probe
	}
	if equalGroup(&cur.Spec, want) && cur.Labels[revisionLabel] == s.Revision {
		return ownership.Unchanged, nil
	}
	setRevision(&cur.ObjectMeta, s.Revision)
	proto.Reset(&cur.Spec)
	proto.Merge(&cur.Spec, want)
	_, err = groups.Update(ctx, cur, metav1.UpdateOptions{})
	if err != nil {
		return "", err
	}
	return ownership.Updated, nil
}

const revisionLabel = "istio.io/rev"

func setRevision(m *metav1.ObjectMeta, rev string) {
	if rev == "" {
		delete(m.Labels, revisionLabel)
		return
	}
	if m.Labels == nil {
		m.Labels = map[string]string{}
	}
	m.Labels[revisionLabel] = rev
}

func equalGroup(a, b *networking.WorkloadGroup) bool {
	return a.GetTemplate().GetServiceAccount() == b.GetTemplate().GetServiceAccount() &&
		a.GetTemplate().GetNetwork() == b.GetTemplate().GetNetwork() &&
		fmt.Sprint(a.GetTemplate().GetPorts()) == fmt.Sprint(b.GetTemplate().GetPorts()) &&
		fmt.Sprint(a.GetMetadata().GetLabels()) == fmt.Sprint(b.GetMetadata().GetLabels()) &&
		fmt.Sprint(a.GetMetadata().GetAnnotations()) == fmt.Sprint(b.GetMetadata().GetAnnotations()) &&
		a.GetProbe().GetHttpGet().GetPath() == b.GetProbe().GetHttpGet().GetPath() &&
		a.GetProbe().GetHttpGet().GetPort() == b.GetProbe().GetHttpGet().GetPort() &&
		a.GetProbe().GetPeriodSeconds() == b.GetProbe().GetPeriodSeconds() &&
		a.GetProbe().GetInitialDelaySeconds() == b.GetProbe().GetInitialDelaySeconds()
}

func ensureService(ctx context.Context, kc kubernetes.Interface, s Spec) (ownership.Action, error) {
	port := corev1.ServicePort{Name: s.PortName, Port: int32(s.Port), TargetPort: intstr.FromInt32(int32(s.Port))}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: s.Group, Namespace: s.Namespace, Labels: ownership.Labels(map[string]string{"app": s.Group})},
		Spec:       corev1.ServiceSpec{Selector: map[string]string{"app": s.Group}, Ports: []corev1.ServicePort{port}},
	}
	cur, err := kc.CoreV1().Services(s.Namespace).Get(ctx, s.Group, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		_, err = kc.CoreV1().Services(s.Namespace).Create(ctx, svc, metav1.CreateOptions{})
		return createdOr(err)
	}
	if err != nil {
		return "", err
	}
	if !ownership.Owned(cur) {
		return ownership.Yours, nil
	}
	if len(cur.Spec.Ports) == 1 && cur.Spec.Ports[0].Port == port.Port && cur.Spec.Ports[0].Name == port.Name && cur.Spec.Selector["app"] == s.Group {
		return ownership.Unchanged, nil
	}
	cur.Spec.Selector, cur.Spec.Ports = svc.Spec.Selector, svc.Spec.Ports
	if _, err := kc.CoreV1().Services(s.Namespace).Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
		return "", err
	}
	return ownership.Updated, nil
}

// FilesFor are the per-VM inputs of the workload files.
type FilesFor struct {
	ClusterID      string
	IstioNamespace string
	// VMIP is the VM's address (ISTIO_SVC_IP); IstiodIP where it reaches istiod.
	VMIP, IstiodIP string
	// VM names the machine: its token is bound to the Secret CredentialName(VM).
	VM            string
	TokenLifetime time.Duration
	// ReuseToken is the token delivered last time: it is kept while more than
	// half its lifetime is left, so re-running up changes nothing.
	ReuseToken []byte
	// Warn, if set, hears what the caller should tell the user (a capped lifetime).
	Warn func(string)
	// Revision is the Istio revision the VM joins ("" or "default": the
	// default): its mesh config and istiod-<revision>.
	Revision string
	// Proxyless writes the files of a VM without Envoy (workloadfiles.Proxyless).
	Proxyless bool
	// CertificateLifetime is the VM's own (SECRET_TTL, over the group's).
	CertificateLifetime time.Duration
	// FollowAddress: VMIP is the VM's interface address, which the agent
	// replaces with the VM's new one after it moves (workloadfiles.FollowAddressKey).
	FollowAddress bool
}

// Files reads the mesh config and root certificate, requests a token and
// generates the VM's workload files.
func Files(ctx context.Context, c Clients, s Spec, f FilesFor) (workloadfiles.Files, error) {
	if f.IstioNamespace == "" {
		f.IstioNamespace = "istio-system"
	}
	meshName := workloadfiles.MeshConfigName(f.Revision)
	meshCM, err := c.Kube.CoreV1().ConfigMaps(f.IstioNamespace).Get(ctx, meshName, metav1.GetOptions{})
	if err != nil {
		return workloadfiles.Files{}, reason.Wrap(fmt.Errorf("mesh config (ConfigMap %s/%s): %w", f.IstioNamespace, meshName, err), reason.MeshConfigMissing, workloadfiles.RevisionName(f.Revision))
	}
	root, err := waitRootCert(ctx, c.Kube, s.Namespace)
	if err != nil {
		return workloadfiles.Files{}, err
	}
	wg, err := c.Istio.NetworkingV1().WorkloadGroups(s.Namespace).Get(ctx, s.Group, metav1.GetOptions{})
	if err != nil {
		return workloadfiles.Files{}, fmt.Errorf("WorkloadGroup %s/%s: %w", s.Namespace, s.Group, err)
	}
	if f.VM == "" {
		return workloadfiles.Files{}, errors.New("workload files: no VM name to bind the token to")
	}
	token := f.ReuseToken
	// The Secret read for the reuse check is the one a new token binds to.
	ok, sec, err := reusable(ctx, c.Kube, token, s, f.VM, f.TokenLifetime)
	if err != nil {
		return workloadfiles.Files{}, fmt.Errorf("credential of %s: %w", f.VM, err)
	}
	if !ok {
		if sec == nil && len(token) > 0 {
			// Not read: the claims ruled the token out.
			if sec, err = credential(ctx, c.Kube, s.Namespace, f.VM); err != nil {
				return workloadfiles.Files{}, fmt.Errorf("credential of %s: %w", f.VM, err)
			}
		}
		t, err := issueToken(ctx, c.Kube, s, f.VM, f.TokenLifetime, sec)
		if err != nil {
			return workloadfiles.Files{}, err
		}
		if t.Capped != "" && f.Warn != nil {
			f.Warn(t.Capped)
		}
		token = t.Raw
	}
	return workloadfiles.Generate(workloadfiles.Options{
		Mesh:           meshCM.Data["mesh"],
		Group:          workloadfiles.Group{Name: wg.Name, Namespace: wg.Namespace, Annotations: wg.Annotations, Spec: &wg.Spec},
		IstioNamespace: f.IstioNamespace, ClusterID: f.ClusterID, AutoRegister: true, DNSCapture: true, Revision: f.Revision,
		ExternalIP: f.VMIP, IstiodIP: f.IstiodIP, RootCert: []byte(root), Token: token, Proxyless: f.Proxyless,
		VM: f.VM, CertificateLifetime: f.CertificateLifetime, FollowAddress: f.FollowAddress,
	})
}

// waitRootCert waits for istiod to publish its root certificate into ns.
func waitRootCert(ctx context.Context, kc kubernetes.Interface, ns string) (string, error) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		cm, err := kc.CoreV1().ConfigMaps(ns).Get(ctx, "istio-ca-root-cert", metav1.GetOptions{})
		if err == nil && cm.Data["root-cert.pem"] != "" {
			return cm.Data["root-cert.pem"], nil
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("ConfigMap %s/istio-ca-root-cert did not appear in 30s: is istiod running? (%v)", ns, err)
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// Entry is a VM's autoregistered WorkloadEntry as istiod wrote it.
type Entry struct {
	Name, Address, Network string
	// Healthy is "True", "False" or "" (no condition yet); Message says why.
	Healthy, Message string
	// ConnectedAt is when the VM's proxy last connected to istiod: it changes
	// when the proxy reconnects (a reboot, an istiod restart).
	ConnectedAt string
	// DisconnectedAt is set while no proxy is connected for the entry
	// (istiod replaces connectedAt with it): its Healthy is then stale.
	DisconnectedAt string
	// Controller is the istiod instance (its pod name) that registered the
	// entry and holds the VM's connection: which revision serves the VM.
	Controller string
	// ProbedAt is the health condition's last probe time: it changes with
	// every health report the proxy sends.
	ProbedAt time.Time
}

// FindEntry returns the WorkloadEntry istiod registered for the VM at address.
func FindEntry(ctx context.Context, c Clients, s Spec, address string) (Entry, bool, error) {
	var items []*clientnetworking.WorkloadEntry
	if c.EntriesAt != nil {
		var err error
		if items, err = c.EntriesAt(ctx, s.Namespace, address); err != nil {
			return Entry{}, false, fmt.Errorf("WorkloadEntries in %s at %s: %w", s.Namespace, address, err)
		}
	} else {
		list, err := c.Istio.NetworkingV1().WorkloadEntries(s.Namespace).List(ctx, metav1.ListOptions{})
		if err != nil {
			return Entry{}, false, fmt.Errorf("list WorkloadEntries in %s: %w", s.Namespace, err)
		}
		items = list.Items
	}
	var best Entry
	found := false
	for i := range items {
		if e, ok := entryAt(items[i], s, address); ok && (!found || e.better(best, s)) {
			best, found = e, true
		}
	}
	return best, found, nil
}

// better says whether e is the VM's entry rather than other, at one
// address: the entry on the workload's network (after the network changed,
// the old one lingers until istiod cleans it up), then the connected one.
func (e Entry) better(other Entry, s Spec) bool {
	if (e.Network == s.Network) != (other.Network == s.Network) {
		return e.Network == s.Network
	}
	return e.DisconnectedAt == "" && other.DisconnectedAt != ""
}

// Entries returns the group's autoregistered entries by address: one list
// for any number of VMs.
func Entries(ctx context.Context, c Clients, s Spec) (map[string]Entry, error) {
	list, err := c.Istio.NetworkingV1().WorkloadEntries(s.Namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list WorkloadEntries in %s: %w", s.Namespace, err)
	}
	out := map[string]Entry{}
	for _, we := range list.Items {
		if e, ok := entryAt(we, s, we.Spec.GetAddress()); ok {
			if had, seen := out[e.Address]; !seen || e.better(had, s) {
				out[e.Address] = e
			}
		}
	}
	return out, nil
}

// entryAt reads we as the group's entry for address.
func entryAt(we *clientnetworking.WorkloadEntry, s Spec, address string) (Entry, bool) {
	if we.Spec.GetAddress() != address || we.Annotations["istio.io/autoRegistrationGroup"] != s.Group {
		return Entry{}, false
	}
	e := Entry{Name: we.Name, Address: we.Spec.GetAddress(), Network: we.Spec.GetNetwork(), ConnectedAt: we.Annotations["istio.io/connectedAt"],
		DisconnectedAt: we.Annotations["istio.io/disconnectedAt"], Controller: we.Annotations["istio.io/workloadController"]}
	for _, cond := range we.Status.GetConditions() {
		if cond.GetType() == "Healthy" {
			e.Healthy, e.Message = cond.GetStatus(), cond.GetMessage()
			e.ProbedAt = cond.GetLastProbeTime().AsTime()
		}
	}
	return e, true
}

// DeleteEntry removes the group's autoregistered WorkloadEntry at address,
// if there is one: a VM that moved leaves its old entry behind until istiod's
// grace period ends, or for good when istiod restarted meanwhile.
func DeleteEntry(ctx context.Context, c Clients, s Spec, address string) (string, error) {
	e, ok, err := FindEntry(ctx, c, s, address)
	if err != nil || !ok {
		return "", err
	}
	err = c.Istio.NetworkingV1().WorkloadEntries(s.Namespace).Delete(ctx, e.Name, metav1.DeleteOptions{})
	if apierrors.IsNotFound(err) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("delete WorkloadEntry %s/%s: %w", s.Namespace, e.Name, err)
	}
	return e.Name, nil
}

// EntryChanges watches the namespace's WorkloadEntries until ctx ends and
// signals on the channel after any change, coalesced: a driver waiting for a
// VM's entry looks again at once instead of polling. A watch the API server
// ends is started again; one it refuses ends the signals (the caller's
// timer still runs).
func EntryChanges(ctx context.Context, c Clients, s Spec) <-chan struct{} {
	changed := make(chan struct{}, 1)
	api := c.Istio.NetworkingV1().WorkloadEntries(s.Namespace)
	go func() {
		for ctx.Err() == nil {
			w, err := api.Watch(ctx, metav1.ListOptions{})
			if err != nil {
				return
			}
			for range w.ResultChan() {
				select {
				case changed <- struct{}{}:
				default:
				}
			}
			w.Stop()
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}()
	return changed
}
