// Package autoregsim stands in for istiod's WorkloadEntry autoregistration
// and for the part of pilot-agent that drives it, in runs without istiod
// (a simulated fleet of thousands of VMs). It writes the objects istiod
// writes, through the real API server, as istio/istio's
// pilot/pkg/autoregistration does (controller.go, internal/health,
// internal/state):
//
//   - on connect, the entry <group>-<ip>[-<network>] (':' made '-', cut from
//     the front at 253) from the WorkloadGroup's template: address the
//     proxy's first IP, labels template < group metadata < proxy labels,
//     the proxy's network, annotations istio.io/autoRegistrationGroup plus
//     the group's metadata annotations, proxy.istio.io/health-checks-enabled
//     when the proxy has a readiness probe, istio.io/workloadController and
//     istio.io/connectedAt; owned by the group (controller). An entry that
//     exists is updated as connected, unless a later disconnect or connect
//     is recorded on it;
//   - each health report from the proxy (it sends transitions only) as the
//     status condition Healthy, lastProbeTime = lastTransitionTime = the
//     report's time, a message when False; only by the istiod holding the
//     connection, and never over a newer report;
//   - on disconnect, connectedAt replaced by istio.io/disconnectedAt, and
//     after the grace period (PILOT_WORKLOAD_ENTRY_GRACE_PERIOD, 10 s) the
//     entry deleted if no proxy came back, at most 20 deletes a second.
//
// Left out: the periodic sweep and the maximum-connection-age leak guard
// (they clean up after an istiod that died; this stand-in's process holds
// every connection it registered), and entries that are not autoregistered.
package autoregsim

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	metav1alpha1 "istio.io/api/meta/v1alpha1"
	networking "istio.io/api/networking/v1alpha3"
	clientnetworking "istio.io/client-go/pkg/apis/networking/v1"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
)

// Annotations and the condition istiod writes.
const (
	GroupAnnotation        = "istio.io/autoRegistrationGroup"
	ControllerAnnotation   = "istio.io/workloadController"
	ConnectedAnnotation    = "istio.io/connectedAt"
	DisconnectedAnnotation = "istio.io/disconnectedAt"
	HealthCheckAnnotation  = "proxy.istio.io/health-checks-enabled"
	ConditionHealthy       = "Healthy"
	// DefaultGrace is PILOT_WORKLOAD_ENTRY_GRACE_PERIOD's default.
	DefaultGrace = 10 * time.Second
	// localityLabel is dropped from the proxy's labels (istiod sets Locality).
	localityLabel = "istio-locality"
)

// timeFormat is istiod's for connectedAt and disconnectedAt.
const timeFormat = time.RFC3339Nano

// Proxy is what a connecting pilot-agent tells istiod of itself (its xDS
// node metadata).
type Proxy struct {
	Namespace string
	// Group is ISTIO_META_AUTO_REGISTER_GROUP.
	Group string
	// IP is the proxy's first address.
	IP      string
	Network string
	// Labels are ISTIO_METAJSON_LABELS.
	Labels map[string]string
	// HealthChecks says the proxy config has a readiness probe.
	HealthChecks bool
}

// EntryName is the WorkloadEntry istiod names for p.
func EntryName(p Proxy) string {
	parts := []string{p.Group, strings.ReplaceAll(p.IP, ":", "-")}
	if p.Network != "" {
		parts = append(parts, p.Network)
	}
	name := strings.Join(parts, "-")
	if len(name) > 253 {
		name = name[len(name)-253:]
	}
	return name
}

// Options tune an Istiod.
type Options struct {
	// Instance is the istio.io/workloadController it writes (an istiod
	// pod's name); default "istiod-autoregsim".
	Instance string
	// Grace is how long a disconnected entry waits for its proxy (default
	// DefaultGrace).
	Grace time.Duration
}

// Istiod registers proxies as istiod does.
type Istiod struct {
	istio    istioclient.Interface
	instance string
	grace    time.Duration
	deletes  *rate.Limiter

	mu     sync.Mutex
	groups map[string]*clientnetworking.WorkloadGroup // istiod reads them from its informer
	timers map[*time.Timer]struct{}
	closed bool
	wg     sync.WaitGroup
}

// New returns an Istiod writing through ic.
func New(ic istioclient.Interface, o Options) *Istiod {
	if o.Instance == "" {
		o.Instance = "istiod-autoregsim"
	}
	if o.Grace <= 0 {
		o.Grace = DefaultGrace
	}
	return &Istiod{istio: ic, instance: o.Instance, grace: o.Grace, deletes: rate.NewLimiter(20, 1),
		groups: map[string]*clientnetworking.WorkloadGroup{}, timers: map[*time.Timer]struct{}{}}
}

// Close cancels the pending deletes and waits for those under way.
func (d *Istiod) Close() {
	d.mu.Lock()
	d.closed = true
	for t := range d.timers {
		if t.Stop() {
			d.wg.Done()
		}
	}
	d.mu.Unlock()
	d.wg.Wait()
}

func (d *Istiod) group(ctx context.Context, ns, name string) (*clientnetworking.WorkloadGroup, error) {
	key := ns + "/" + name
	d.mu.Lock()
	g, ok := d.groups[key]
	d.mu.Unlock()
	if ok {
		return g, nil
	}
	g, err := d.istio.NetworkingV1().WorkloadGroups(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("auto-registration WorkloadEntry failed: cannot find WorkloadGroup %s: %w", key, err)
	}
	d.mu.Lock()
	d.groups[key] = g
	d.mu.Unlock()
	return g, nil
}

// Connect registers p, connected at at: it creates its entry from the group,
// or marks the existing one connected to this istiod. It returns the entry's name.
func (d *Istiod) Connect(ctx context.Context, p Proxy, at time.Time) (string, error) {
	if p.Group == "" || p.Namespace == "" || p.IP == "" {
		return "", fmt.Errorf("auto-registration of %+v: want a group, a namespace and an IP", p)
	}
	name := EntryName(p)
	entries := d.istio.NetworkingV1().WorkloadEntries(p.Namespace)
	for {
		cur, err := entries.Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			g, err := d.group(ctx, p.Namespace, p.Group)
			if err != nil {
				return "", err
			}
			we := entryFromGroup(name, p, g)
			d.setConnected(&we.ObjectMeta, at)
			_, err = entries.Create(ctx, we, metav1.CreateOptions{})
			if apierrors.IsAlreadyExists(err) {
				continue // another connect won: update it as connected
			}
			if err != nil {
				return "", fmt.Errorf("auto-registration WorkloadEntry of %s failed: error creating WorkloadEntry: %w", p.IP, err)
			}
			return name, nil
		}
		if err != nil {
			return "", err
		}
		if !d.connectedAfter(cur, at) {
			return name, nil
		}
		d.setConnected(&cur.ObjectMeta, at)
		_, err = entries.Update(ctx, cur, metav1.UpdateOptions{})
		if apierrors.IsConflict(err) || apierrors.IsNotFound(err) {
			continue // istiod retries the whole check (the grace period's delete may have won: create it)
		}
		if err != nil {
			return "", fmt.Errorf("failed updating WorkloadEntry %s/%s: %w", p.Namespace, name, err)
		}
		return name, nil
	}
}

// connectedAfter says whether a connect at at is news for we: not older than
// a disconnect or connect recorded on it, nor one already recorded by us.
func (d *Istiod) connectedAfter(we *clientnetworking.WorkloadEntry, at time.Time) bool {
	if ts, ok := we.Annotations[DisconnectedAnnotation]; ok {
		if dis, _ := time.Parse(timeFormat, ts); at.Before(dis) {
			return false
		}
	}
	last, _ := time.Parse(timeFormat, we.Annotations[ConnectedAnnotation])
	if at.Before(last) {
		return false // the proxy has since connected to another istiod
	}
	return !(we.Annotations[ControllerAnnotation] == d.instance && !at.After(last))
}

func (d *Istiod) setConnected(m *metav1.ObjectMeta, at time.Time) {
	if m.Annotations == nil {
		m.Annotations = map[string]string{}
	}
	m.Annotations[ControllerAnnotation] = d.instance
	m.Annotations[ConnectedAnnotation] = at.Format(timeFormat)
	delete(m.Annotations, DisconnectedAnnotation)
}

func entryFromGroup(name string, p Proxy, g *clientnetworking.WorkloadGroup) *clientnetworking.WorkloadEntry {
	spec := proto.Clone(g.Spec.GetTemplate()).(*networking.WorkloadEntry)
	if spec == nil {
		spec = &networking.WorkloadEntry{}
	}
	spec.Address = p.IP
	labels := maps.Clone(spec.Labels)
	if labels == nil && (len(g.Spec.GetMetadata().GetLabels()) > 0 || len(p.Labels) > 0) {
		labels = map[string]string{}
	}
	maps.Copy(labels, g.Spec.GetMetadata().GetLabels())
	if p.Labels != nil {
		maps.Copy(labels, p.Labels)
		delete(labels, localityLabel)
	}
	spec.Labels = labels
	annotations := map[string]string{GroupAnnotation: g.Name}
	maps.Copy(annotations, g.Spec.GetMetadata().GetAnnotations())
	if p.Network != "" {
		spec.Network = p.Network
	}
	if p.HealthChecks {
		annotations[HealthCheckAnnotation] = "true"
	}
	controller := true
	we := &clientnetworking.WorkloadEntry{ObjectMeta: metav1.ObjectMeta{
		Name: name, Namespace: p.Namespace, Labels: labels, Annotations: annotations,
		OwnerReferences: []metav1.OwnerReference{{APIVersion: "networking.istio.io/v1", Kind: "WorkloadGroup", Name: g.Name, UID: g.UID, Controller: &controller}},
	}}
	proto.Merge(&we.Spec, spec)
	return we
}

// Health records a health report of p's proxy made at at, as istiod does:
// only while this istiod holds the entry, never over a newer report.
func (d *Istiod) Health(ctx context.Context, p Proxy, healthy bool, message string, at time.Time) error {
	name := EntryName(p)
	entries := d.istio.NetworkingV1().WorkloadEntries(p.Namespace)
	for {
		cur, err := entries.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("failed to update health status for %s: WorkloadEntry %s/%s: %w", p.IP, p.Namespace, name, err)
		}
		if cur.Annotations[ControllerAnnotation] != d.instance {
			return nil // the proxy reconnected to another istiod
		}
		cond := &metav1alpha1.IstioCondition{Type: ConditionHealthy, Status: "False", LastProbeTime: timestamppb.New(at), LastTransitionTime: timestamppb.New(at)}
		if healthy {
			cond.Status = "True"
		} else {
			cond.Message = message
		}
		replaced := false
		for i, c := range cur.Status.Conditions {
			if c.GetType() != ConditionHealthy {
				continue
			}
			if c.GetLastProbeTime().AsTime().After(at) {
				return nil // a newer report is recorded
			}
			cur.Status.Conditions[i], replaced = cond, true
		}
		if !replaced {
			cur.Status.Conditions = append(cur.Status.Conditions, cond)
		}
		_, err = entries.UpdateStatus(ctx, cur, metav1.UpdateOptions{})
		if apierrors.IsConflict(err) {
			continue
		}
		if err != nil {
			return fmt.Errorf("error while updating WorkloadEntry health status for %s: %w", p.IP, err)
		}
		return nil
	}
}

// Disconnect records that p's proxy, connected at connectedAt, went away at
// at, and deletes its entry after the grace period unless a proxy came back.
func (d *Istiod) Disconnect(ctx context.Context, p Proxy, connectedAt, at time.Time) error {
	name := EntryName(p)
	entries := d.istio.NetworkingV1().WorkloadEntries(p.Namespace)
	for {
		cur, err := entries.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("workloadentry %s/%s: %w", p.Namespace, name, err)
		}
		if ts, err := time.Parse(timeFormat, cur.Annotations[ConnectedAnnotation]); err == nil && ts.After(connectedAt) {
			return nil // it reconnected before this disconnect was processed
		}
		if cur.Annotations[ControllerAnnotation] != d.instance {
			return nil
		}
		delete(cur.Annotations, ConnectedAnnotation)
		cur.Annotations[DisconnectedAnnotation] = at.Format(timeFormat)
		_, err = entries.Update(ctx, cur, metav1.UpdateOptions{})
		if apierrors.IsConflict(err) {
			continue
		}
		if err != nil {
			return fmt.Errorf("disconnect: failed updating WorkloadEntry %s/%s: %w", p.Namespace, name, err)
		}
		d.afterGrace(p.Namespace, name)
		return nil
	}
}

// afterGrace deletes the entry once the grace period has passed, if it is
// still disconnected.
func (d *Istiod) afterGrace(ns, name string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return
	}
	d.wg.Add(1)
	var t *time.Timer
	t = time.AfterFunc(d.grace, func() {
		defer d.wg.Done()
		d.mu.Lock()
		delete(d.timers, t)
		d.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		d.cleanup(ctx, ns, name)
	})
	d.timers[t] = struct{}{}
}

// ErrKept says a cleanup found the entry connected again or still in its grace.
var ErrKept = errors.New("entry kept")

func (d *Istiod) cleanup(ctx context.Context, ns, name string) error {
	entries := d.istio.NetworkingV1().WorkloadEntries(ns)
	cur, err := entries.Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if cur.Annotations[ConnectedAnnotation] != "" {
		return ErrKept
	}
	dis, err := time.Parse(timeFormat, cur.Annotations[DisconnectedAnnotation])
	if err == nil && time.Since(dis) < d.grace {
		return ErrKept
	}
	if err := d.deletes.Wait(ctx); err != nil {
		return err
	}
	rv := cur.ResourceVersion
	err = entries.Delete(ctx, name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{ResourceVersion: &rv}})
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}

// PublishRootCert writes the ConfigMap istio-ca-root-cert into ns as
// istiod's namespace controller does (key root-cert.pem), where no istiod
// runs to publish its CA's root; an existing one is left alone.
func PublishRootCert(ctx context.Context, kc kubernetes.Interface, ns string, rootPEM []byte) error {
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "istio-ca-root-cert", Namespace: ns,
		Labels: map[string]string{"istio.io/config": "true"}}, Data: map[string]string{"root-cert.pem": string(rootPEM)}}
	_, err := kc.CoreV1().ConfigMaps(ns).Create(ctx, cm, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return nil
	}
	return err
}
