// Package vmctl is the MeshVM controller: each MeshVM reconciled by the
// per-VM core (pkg/host/vmcore) that hostctl drives too, its conditions
// written to the MeshVM's status when they change, its token rotated at
// about half its life, and on delete its token revoked, its WorkloadEntry
// deleted and its agent's changes undone.
package vmctl

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"sync"
	"time"

	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	"github.com/meshvm/meshvm/api/meshvm/v1alpha1"
	"github.com/meshvm/meshvm/pkg/credinfo"
	"github.com/meshvm/meshvm/pkg/fleetstore"
	"github.com/meshvm/meshvm/pkg/host/formcache"
	"github.com/meshvm/meshvm/pkg/host/vmcore"
	"github.com/meshvm/meshvm/pkg/mesh/workload"
)

// Defaults of a MeshVM's spec and of the controller's timing.
const (
	DefaultTokenLifetime = 30 * 24 * time.Hour
	// DefaultResync is the periodic look at a VM: with a stream per agent
	// (sidecar, app probe, certificate, token, addresses and liveness come
	// as events) and WorkloadEntries watched, it only repairs what no event
	// shows, a file changed on the VM. A pass costs about 15 API requests
	// (measured: 43 per VM over 2.6 passes from declared to Ready), so
	// 1,000 VMs every 10 minutes are ~25 requests a second, half the
	// default client limit; every minute would need ~250, five times it.
	DefaultResync = 10 * time.Minute
	// DefaultReleaseAfter is how long a deleted MeshVM waits for its agent
	// to answer before it is released with the agent's changes left.
	DefaultReleaseAfter = 5 * time.Minute
)

// Reconciler reconciles MeshVMs.
type Reconciler struct {
	// Client reads MeshVMs (from the cache) and writes them.
	Client client.Client
	// Kube are the clients the core works through (no cache: Secrets,
	// TokenRequests, WorkloadEntries as they are now).
	Kube workload.Clients
	// Namespace holds the store's Secrets and the fleet settings.
	Namespace string
	Events    events.EventRecorder
	Sidecars  *Sidecars
	Forms     *formcache.Cache
	Resync    time.Duration
	// ReleaseAfter bounds the wait for a deleted VM's agent.
	ReleaseAfter time.Duration
	// Now is the clock (time.Now when nil).
	Now func() time.Time
	// Streams, when set, holds a stream per VM's agent (the leader's).
	Streams *Streams
	// Queue bounds the work queue's retries.
	Queue QueueLimits
	// Scope, when its Namespace is set, is what SetupWithManager reads
	// from the manager's cache instead of the API server (the manager's
	// cache made with Scope.CacheOptions).
	Scope Scope

	// written holds each MeshVM's last status write until the cache
	// shows it (ownWrite).
	written sync.Map
}

func (r *Reconciler) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

// Reconcile runs one pass over a MeshVM.
func (r *Reconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	var vm v1alpha1.MeshVM
	if err := r.Client.Get(ctx, req.NamespacedName, &vm); err != nil {
		if apierrors.IsNotFound(err) {
			r.forgetAgent(req.NamespacedName)
			r.written.Delete(req.NamespacedName)
		}
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	// A pass's record changes are written at its end, one write per VM.
	store := fleetstore.New(ctx, r.Kube.Kube, r.Namespace, vm.Namespace, fleetstore.Batched())
	if !vm.DeletionTimestamp.IsZero() {
		r.forgetAgent(req.NamespacedName)
		res, err := r.finalize(ctx, &vm, store)
		return res, errors.Join(err, store.Flush())
	}
	if controllerutil.AddFinalizer(&vm, v1alpha1.Finalizer) {
		// Once per VM; the status below is patched from what it returns.
		if err := r.Client.Update(ctx, &vm); err != nil {
			return ctrl.Result{}, err
		}
	}
	orig := r.ownWrite(&vm)
	res, err := r.pass(ctx, &vm, store)
	err = errors.Join(err, store.Flush())
	if err != nil {
		countError(&vm)
	}
	vm.Status.ObservedGeneration = vm.Generation
	if err == nil && r.firstWait(&vm, orig, store) {
		return res, nil
	}
	if werr := r.writeStatus(ctx, &vm, orig); werr != nil {
		if apierrors.IsNotFound(werr) {
			return ctrl.Result{}, nil // deleted meanwhile
		}
		return ctrl.Result{}, errors.Join(err, werr)
	}
	return res, err
}

// entryWait is how long a VM just given its files waits on istiod (its
// registration, its first health report) before its status says so. The
// controller watches WorkloadEntries, so the entry's arrival brings the
// next pass: the pass that delivered the files writes no status, and that
// next one writes it once, Ready, where two writes were. It is also the
// look again while waiting, a safety net for a missed event.
const entryWait = 30 * time.Second

// firstWait says the pass onboarded a VM whose status was never written
// and which now waits only on istiod, its token issued (the files sent)
// less than entryWait ago: its status is left to the next pass. The
// token's issue time, in the record, is what bounds it; nothing is held in
// the process. A request acted on (onboard, renew) is always written.
func (r *Reconciler) firstWait(vm, orig *v1alpha1.MeshVM, store *fleetstore.Store) bool {
	if findCondition(orig.Status.Conditions, v1alpha1.ConditionReady) != nil || !waitsOnIstiod(vm.Status) ||
		vm.Status.OnboardRequest != orig.Status.OnboardRequest || vm.Status.RenewRequest != orig.Status.RenewRequest {
		return false
	}
	info, ok := tokenInfo(store, vm.Name)
	age := r.now().Sub(info.IssuedAt)
	return ok && age >= 0 && age < entryWait
}

// waitsOnIstiod says Ready is held back only by istiod: no entry yet, or
// no health report from the (re)connected sidecar yet.
func waitsOnIstiod(st v1alpha1.MeshVMStatus) bool {
	c := findCondition(st.Conditions, v1alpha1.ConditionReady)
	if c == nil || c.Status != metav1.ConditionFalse {
		return false
	}
	switch vmcore.Reason(c.Reason) {
	case vmcore.NoEntry, vmcore.NotReconnected:
		return true
	case vmcore.EntryNotHealthy:
		return st.Healthy == "Unknown"
	}
	return false
}

// written is a status this process wrote, with the MeshVM's
// resourceVersion just before the write.
type written struct {
	before string
	status v1alpha1.MeshVMStatus
}

// ownWrite is vm as the pass starts from: vm itself, unless the cache
// still shows it as it was just before this process's last status write
// (the next event came first), then with that status. A pass that read
// the older status would write the same again, and tell its transitions
// twice. Losing this (a restart) costs one write, nothing else.
func (r *Reconciler) ownWrite(vm *v1alpha1.MeshVM) *v1alpha1.MeshVM {
	orig := vm.DeepCopy()
	key := client.ObjectKeyFromObject(vm)
	v, ok := r.written.Load(key)
	if !ok {
		return orig
	}
	if w := v.(written); w.before == vm.ResourceVersion {
		orig.Status, vm.Status = *w.status.DeepCopy(), *w.status.DeepCopy()
		return orig
	}
	r.written.Delete(key) // the cache caught up
	return orig
}

// writeStatus writes the status when it changed from orig's, and tells
// each condition's transition as an Event. It is a merge patch without a
// resourceVersion: the controller alone writes the status, and a pass that
// read a MeshVM from a cache one write behind (an event came before the
// cache saw the last pass's status) would otherwise fail on a conflict and
// need another pass.
func (r *Reconciler) writeStatus(ctx context.Context, vm, orig *v1alpha1.MeshVM) error {
	old := &orig.Status
	if equality.Semantic.DeepEqual(*old, vm.Status) {
		return nil
	}
	before := vm.ResourceVersion
	if err := r.Client.Status().Patch(ctx, vm, client.MergeFrom(orig)); err != nil {
		return err
	}
	r.written.Store(client.ObjectKeyFromObject(vm), written{before: before, status: *vm.Status.DeepCopy()})
	for _, c := range vm.Status.Conditions {
		if kind, ok := eventOf(findCondition(old.Conditions, c.Type), c); ok {
			r.event(vm, kind, c.Reason, "Reconcile", "%s %s: %s", c.Type, c.Status, c.Message)
		}
	}
	return nil
}

// eventOf says whether a condition's change from was (nil: first set) to c
// is told as an Event, and its kind. Events are API writes: Ready's
// transitions tell the story (back in, and why not), the others only
// when they leave True (a failure Ready sums up by one reason) or the VM
// moved. A first Ready, True or waiting for istiod to register the VM, is
// the status's news (kubectl get shows it): onboarding a VM costs no
// Event, and a fleet of a thousand adds no thousand Events. A
// repair of a VM seen in order (its sidecar restarted, files sent again)
// is told too: the status alone shows it only until the next pass.
func eventOf(was *metav1.Condition, c metav1.Condition) (string, bool) {
	switch {
	case was != nil && was.Status == c.Status && was.Reason == c.Reason:
		return "", false
	case was != nil && was.Status == metav1.ConditionTrue && c.Status == metav1.ConditionTrue && repairs[vmcore.Reason(c.Reason)]:
		return "Normal", true
	case c.Type == v1alpha1.ConditionReady:
		if was == nil && (c.Status == metav1.ConditionTrue || c.Reason == string(vmcore.NoEntry)) {
			return "", false
		}
	case c.Type == string(vmcore.AddressMoved):
		return "Normal", c.Status == metav1.ConditionTrue
	case was == nil || was.Status != metav1.ConditionTrue || c.Status == metav1.ConditionTrue:
		return "", false
	}
	if c.Status == metav1.ConditionTrue {
		return "Normal", true
	}
	return "Warning", true
}

// repairs are the reasons a condition takes when a pass put drift right.
var repairs = map[vmcore.Reason]bool{vmcore.SidecarRestarted: true, vmcore.FilesSent: true}

func findCondition(cs []metav1.Condition, t string) *metav1.Condition {
	for i := range cs {
		if cs[i].Type == t {
			return &cs[i]
		}
	}
	return nil
}

func (r *Reconciler) event(vm runtime.Object, kind, reason, action, format string, args ...any) {
	if r.Events != nil {
		r.Events.Eventf(vm, nil, kind, reason, action, format, args...)
	}
}

// notReady sets Ready False with a reason that names the fix, for what
// stops a pass before the core runs.
func notReady(vm *v1alpha1.MeshVM, reason, format string, args ...any) {
	setCondition(&vm.Status, metav1.Condition{Type: v1alpha1.ConditionReady, Status: metav1.ConditionFalse, Reason: reason,
		Message: fmt.Sprintf(format, args...), ObservedGeneration: vm.Generation})
}

// ConditionPaused is set while spec.paused holds.
const ConditionPaused = "Paused"

// Reasons the controller sets besides the core's.
const (
	ReasonSettingsMissing       = "FleetSettingsMissing"
	ReasonWorkloadGroupNotFound = "WorkloadGroupNotFound"
	ReasonNoAddress             = "NoAddress"
	ReasonRevisionNotRunning    = "RevisionNotRunning"
	ReasonPaused                = "Paused"
	ReasonUpToDate              = "UpToDate"
	ReasonTokenRotated          = "TokenRotated"
	ReasonRotationFailed        = "TokenRotationFailed"
	ReasonAgentGone             = "AgentNotAnswering"
	ReasonReleased              = "Released"
	ReasonRemoved               = "Removed"
)

// pass observes and converges the VM, setting its status; it returns when
// to look again.
func (r *Reconciler) pass(ctx context.Context, vm *v1alpha1.MeshVM, store *fleetstore.Store) (ctrl.Result, error) {
	settings, err := fleetstore.LoadSettings(ctx, r.Kube.Kube, r.Namespace)
	if err != nil {
		notReady(vm, ReasonSettingsMissing, "%v", err)
		return ctrl.Result{}, err
	}
	wg, err := r.Kube.Istio.NetworkingV1().WorkloadGroups(vm.Namespace).Get(ctx, vm.Spec.WorkloadGroup, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		notReady(vm, ReasonWorkloadGroupNotFound, "WorkloadGroup %s/%s does not exist: create it, or set spec.workloadGroup to an existing group", vm.Namespace, vm.Spec.WorkloadGroup)
		return ctrl.Result{RequeueAfter: r.resync(vm)}, nil
	}
	if err != nil {
		return ctrl.Result{}, err
	}
	addr, err := r.address(ctx, vm, store)
	if err != nil {
		return ctrl.Result{}, err
	}
	if addr == "" {
		notReady(vm, ReasonNoAddress, "no address for the VM: set spec.address, or onboard it with hostctl first")
		return ctrl.Result{RequeueAfter: r.resync(vm)}, nil
	}
	deps := r.deps(vm, addr, workloadSpec(vm, wg))
	var agentVersion string
	deps.Record = func(e vmcore.Event) {
		switch e.Reason {
		case vmcore.AgentAnswering:
			agentVersion = e.Object
		case vmcore.TokenCapped, vmcore.StaleEntryDeleted:
			r.event(vm, "Normal", string(e.Reason), "Reconcile", "%s", e.Message)
		}
	}
	targets := vmcore.NewTargets(mesh{kube: r.Kube.Kube, settings: settings, sidecars: r.Sidecars, istiod: vm.Annotations[v1alpha1.AnnotationIstiodAddress]},
		settings.IstioNamespace, r.Forms)
	target := targets.Snapshot(ctx)
	version, err := target.IstiodVersion(ctx, vm.Spec.Revision)
	var notRunning *RevisionNotRunning
	if errors.As(err, &notRunning) {
		setCondition(&vm.Status, metav1.Condition{Type: v1alpha1.ConditionUpToDate, Status: metav1.ConditionFalse, Reason: ReasonRevisionNotRunning, Message: err.Error(), ObservedGeneration: vm.Generation})
		notReady(vm, ReasonRevisionNotRunning, "%v", err)
		return ctrl.Result{RequeueAfter: r.resync(vm)}, nil
	}
	if err != nil {
		return ctrl.Result{}, err
	}
	if vm.Spec.Paused {
		r.forgetAgent(client.ObjectKeyFromObject(vm))
		// The conditions stay as last seen; Paused says they are not looked at.
		setCondition(&vm.Status, metav1.Condition{Type: ConditionPaused, Status: metav1.ConditionTrue, Reason: ReasonPaused,
			Message: "spec.paused: the controller does not act on the VM or look at it; set it to false to resume", ObservedGeneration: vm.Generation})
		return ctrl.Result{}, nil
	}
	meta.RemoveStatusCondition(&vm.Status.Conditions, ConditionPaused)
	spec := vmcore.Spec{Name: vm.Name, Generation: vm.Generation, RunsApp: vm.Spec.App == nil || *vm.Spec.App, ProbePort: deps.Workload.ProbePort,
		AppPort: deps.Workload.Port, TokenLifetime: tokenLifetime(vm), CertificateLifetime: certificateLifetime(vm),
		FollowAddress: vm.Spec.Address == "", Revision: vm.Spec.Revision, Pinned: true, Recheck: true, FreshToken: onboardPending(vm), Restart: restartPending(vm)}
	res, err := vmcore.Reconcile(ctx, spec, coreStatus(vm.Status), target, store, deps)
	applyCore(&vm.Status, res.Status)
	if agentVersion != "" {
		vm.Status.Agent = "connected " + agentVersion
	}
	recheck := r.watchAgent(vm, addr, deps.Workload, agentVersion, store)
	certificateTimes(&vm.Status, res.Status)
	r.upToDate(vm, res.Status, version)
	if err == nil {
		r.requests(ctx, vm, res, spec, store, deps)
	}
	if err == nil && res.Cause != nil {
		// An agent that does not answer: the work queue backs off, per VM.
		err = res.Cause
	}
	if err != nil {
		r.tokenTimes(vm, store)
		return ctrl.Result{}, err
	}
	next := res.RequeueAfter
	if !res.Done && waitsOnIstiod(vm.Status) {
		next = max(next, entryWait)
	}
	if res.Done {
		next = r.resync(vm)
		if due := r.rotate(ctx, vm, spec, store, deps); due > 0 && due < next {
			next = due
		}
	}
	r.tokenTimes(vm, store)
	if next <= 0 {
		next = r.resync(vm)
	}
	if recheck > 0 && recheck < next {
		next = recheck
	}
	return ctrl.Result{RequeueAfter: next}, nil
}

// address is where the VM's agent answers: its spec's; else where it was
// last onboarded (its record, else its status), unless it moved (follow).
func (r *Reconciler) address(ctx context.Context, vm *v1alpha1.MeshVM, store *fleetstore.Store) (string, error) {
	if vm.Spec.Address != "" {
		return vm.Spec.Address, nil
	}
	addr, err := store.Address(vm.Name)
	if err != nil {
		return "", err
	}
	if addr == "" {
		addr = vm.Status.Address
	}
	if vm.Spec.Paused {
		return addr, nil
	}
	return r.follow(ctx, vm, addr, store)
}

func certificateLifetime(vm *v1alpha1.MeshVM) time.Duration {
	if vm.Spec.CertificateLifetime != nil {
		return vm.Spec.CertificateLifetime.Duration
	}
	return 0
}

func (r *Reconciler) deps(vm *v1alpha1.MeshVM, addr string, ws workload.Spec) vmcore.Deps {
	return vmcore.Deps{Machines: addressed{name: vm.Name, addr: addr}, Kube: r.Kube, Workload: ws, Now: r.Now}
}

// workloadSpec is the VM's workload: its MeshVM's namespace and group, the
// group's service account, network and probe.
func workloadSpec(vm *v1alpha1.MeshVM, wg *networkingv1.WorkloadGroup) workload.Spec {
	ws := workload.Spec{Namespace: vm.Namespace, Group: vm.Spec.WorkloadGroup, Network: vm.Spec.Network}
	if wg == nil {
		return ws
	}
	if t := wg.Spec.GetTemplate(); t != nil {
		ws.ServiceAccount = t.GetServiceAccount()
		if ws.Network == "" {
			ws.Network = t.GetNetwork()
		}
		for name, port := range t.GetPorts() {
			ws.PortName, ws.Port = name, int(port)
		}
	}
	if p := wg.Spec.GetProbe().GetHttpGet(); p != nil {
		ws.ProbePort, ws.ProbePath = int(p.GetPort()), p.GetPath()
	}
	return ws
}

func tokenLifetime(vm *v1alpha1.MeshVM) time.Duration {
	if vm.Spec.TokenLifetime != nil && vm.Spec.TokenLifetime.Duration > 0 {
		return vm.Spec.TokenLifetime.Duration
	}
	return DefaultTokenLifetime
}

// upToDate says whether the VM runs the revision its spec names, with
// that revision's istiod's version.
func (r *Reconciler) upToDate(vm *v1alpha1.MeshVM, cs vmcore.Status, version string) {
	want := revisionName(vm.Spec.Revision)
	c := metav1.Condition{Type: v1alpha1.ConditionUpToDate, Status: metav1.ConditionTrue, Reason: ReasonUpToDate,
		Message: fmt.Sprintf("revision %s, Istio %s", want, version), ObservedGeneration: vm.Generation}
	switch {
	case cs.Istio == "":
		c.Status, c.Reason, c.Message = metav1.ConditionUnknown, string(vmcore.NotObserved), "the VM's files are not generated yet"
	case revisionName(cs.Revision) != want || cs.Istio != version:
		c.Status, c.Reason = metav1.ConditionFalse, "Behind"
		c.Message = fmt.Sprintf("on revision %s, Istio %s; wants revision %s, Istio %s", revisionName(cs.Revision), cs.Istio, want, version)
	}
	setCondition(&vm.Status, c)
}

// rotate replaces the VM's token at 40 to 50 % of its life (jittered per
// VM, so a fleet's tokens do not all turn over at once; before the pass's
// own reissue at half its life), sending only that file. It returns how
// long until the next rotation is due (0: no token to judge).
func (r *Reconciler) rotate(ctx context.Context, vm *v1alpha1.MeshVM, spec vmcore.Spec, store *fleetstore.Store, deps vmcore.Deps) time.Duration {
	info, ok := tokenInfo(store, vm.Name)
	if !ok {
		return 0
	}
	if due := rotationDue(info, string(vm.UID)); r.now().Before(due) {
		return due.Sub(r.now())
	}
	renewal, err := vmcore.RenewToken(ctx, vm.Name, spec.TokenLifetime, true, store, deps)
	if err != nil {
		rotations.WithLabelValues("failed").Inc()
		r.event(vm, "Warning", ReasonRotationFailed, "RotateToken", "token rotation: %v", err)
		return r.resync(vm) / 4
	}
	rotations.WithLabelValues("ok").Inc()
	now := metav1.NewTime(r.now().Truncate(time.Second))
	vm.Status.TokenRotatedAt = &now
	r.event(vm, "Normal", ReasonTokenRotated, "RotateToken", "new token valid until %s; only the token file sent, the sidecar not restarted", renewal.ExpiresAt.UTC().Format(time.RFC3339))
	if info, ok = tokenInfo(store, vm.Name); !ok {
		return 0
	}
	return max(rotationDue(info, string(vm.UID)).Sub(r.now()), time.Second)
}

// tokenInfo is the claims of VM vm's last token, when it has one with
// both times.
func tokenInfo(store *fleetstore.Store, vm string) (credinfo.Token, bool) {
	tok, err := store.Token(vm)
	if err != nil || len(tok) == 0 {
		return credinfo.Token{}, false
	}
	info, err := credinfo.ParseToken(tok)
	return info, err == nil && !info.IssuedAt.IsZero() && !info.ExpiresAt.IsZero()
}

// rotationDue is when a token is replaced: at 40 to 50 % of its life, the
// point fixed per VM by a hash of its UID (no process memory needed).
func rotationDue(t credinfo.Token, uid string) time.Time {
	h := fnv.New32a()
	h.Write([]byte(uid))
	frac := 0.4 + 0.1*float64(h.Sum32()%1000)/1000
	return t.IssuedAt.Add(time.Duration(float64(t.ExpiresAt.Sub(t.IssuedAt)) * frac))
}

// tokenTimes shows the token's end in the status.
func (r *Reconciler) tokenTimes(vm *v1alpha1.MeshVM, store *fleetstore.Store) {
	if info, ok := tokenInfo(store, vm.Name); ok {
		t := metav1.NewTime(info.ExpiresAt.Truncate(time.Second))
		vm.Status.TokenExpiresAt = &t
	}
}

// resync is the periodic look, jittered by ±10 % per VM.
func (r *Reconciler) resync(vm *v1alpha1.MeshVM) time.Duration {
	d := r.Resync
	if d <= 0 {
		d = DefaultResync
	}
	h := fnv.New32a()
	h.Write([]byte(vm.UID))
	h.Write([]byte(r.now().Format(time.RFC3339)))
	return d + time.Duration(float64(d)*(0.2*float64(h.Sum32()%1000)/1000-0.1))
}
