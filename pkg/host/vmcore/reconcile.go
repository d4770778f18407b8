package vmcore

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/meshvm/meshvm/pkg/credinfo"
	"github.com/meshvm/meshvm/pkg/host/agentclient"
	"github.com/meshvm/meshvm/pkg/host/onboard"
	"github.com/meshvm/meshvm/pkg/machine"
	"github.com/meshvm/meshvm/pkg/mesh/workload"
	"github.com/meshvm/meshvm/pkg/mesh/workloadfiles"
)

// Spec is one VM as declared, with what this onboarding asks for.
type Spec struct {
	Name string
	// Generation changes when the declaration (or the request: a new
	// vm onboard) does; the files are delivered once per generation.
	Generation int64
	// RunsApp says meshvm's app serves the probe; otherwise the VM's own app
	// does, and Registered is as far as meshvm can take the VM.
	RunsApp bool
	// Proxyless runs pilot-agent without Envoy for the VM's gRPC app: only
	// pilot-agent is delivered, nothing is captured, and the VM is in as far
	// as meshvm can take it once the sidecar runs, since pilot-agent
	// connects to istiod (and so registers the VM) only while the app holds
	// its xDS connection.
	Proxyless     bool
	ProbePort     int
	TokenLifetime time.Duration
	// CertificateLifetime is the VM's own workload certificate lifetime
	// (SECRET_TTL in its files); zero leaves the group's or Istio's 24 h.
	CertificateLifetime time.Duration
	// FollowAddress says the VM's address is whatever its machine has now
	// (no one pinned it): its files let the agent register a moved VM at
	// its new address (agentspec.FollowAddressKey).
	FollowAddress bool
	// FreshToken issues a new token even when the last has life left.
	FreshToken bool
	// Restart restarts the sidecar even when nothing it reads at start changed.
	Restart bool
	// Revision, when Pinned, is the revision to onboard onto; otherwise
	// the VM stays on the one it joined, and a new VM joins the target's.
	Revision string
	Pinned   bool
	// Provision creates the machine (or finds it running), converges
	// meshvm's app (or takes it off a VM that runs its own) and installs or
	// updates the agent, once per generation; otherwise the VM must run
	// with its agent answering.
	Provision bool
	Machine   machine.Spec
	// AppPort is the workload port meshvm's app serves.
	AppPort int
	// KeepFiles takes the files as the VM's last onboarding left them (a
	// machine booted again starts its agent and sidecar on its own): the
	// pass checks the machine and the agent, then awaits the entry;
	// nothing is issued or sent.
	KeepFiles bool
	// Recheck looks at the agent, the files and the sidecar even when this
	// generation delivered them: a controller's periodic look, which
	// repairs drift (a lost hosts block, a changed file, a stopped sidecar).
	Recheck bool
	// AgentOnly ends the pass once the agent answers, before anything is
	// issued or sent: in fleet mode the workstation provisions (machine,
	// app, agent) and the controller onboards.
	AgentOnly bool
}

// Status is what the passes found, carried from one pass to the next (a
// custom resource's status, or the driver's memory).
type Status struct {
	Conditions Conditions
	// Address is where this generation onboarded the VM.
	Address string
	// MachineState is the machine's state in lower case ("stopped").
	MachineState string
	// Revision and Istio are what the VM was onboarded onto.
	Revision, Istio string
	// Provisioned is the generation whose machine, app and agent were
	// converged (Spec.Provision).
	Provisioned int64
	// Entry is the VM's WorkloadEntry as last seen.
	Entry workload.Entry
	// CertNotBefore and CertNotAfter bound the workload certificate
	// pilot-agent holds, as the agent read it (zero: none yet).
	CertNotBefore, CertNotAfter time.Time
}

// Result is one pass's outcome.
type Result struct {
	Status Status
	// Done says the VM is onboarded: Healthy (Registered when its app is its
	// own) and its address recorded; no pass is needed until something changes.
	Done bool
	// RequeueAfter is when the next pass should look, when not Done.
	RequeueAfter time.Duration
	// Cause is the error behind the False condition that ended the pass
	// early (an agent that does not answer), for the driver to wrap.
	Cause error
}

// Event is something a pass did or found worth telling as it happens, as a
// controller's Events are.
type Event struct {
	Condition ConditionType
	Reason    Reason
	// Object names what the event is about besides the VM (its WorkloadEntry).
	Object  string
	Message string
}

// Events the core records besides its conditions' reasons.
const (
	// RevisionKept: the VM stays on its revision while new VMs join another.
	RevisionKept Reason = "RevisionKept"
	// Joining names the revision and proxy version the files point at.
	Joining Reason = "Joining"
	// TokenCapped: the API server issued a shorter token than asked.
	TokenCapped Reason = "TokenCapped"
	// Delivered says what the files step sent and how the sidecar is.
	Delivered Reason = "Delivered"
)

// Deps are the clients a pass works through.
type Deps struct {
	Machines machine.Provider
	Kube     workload.Clients
	Workload workload.Spec
	// Record, when set, is told each Event as it happens.
	Record func(Event)
	// Now is the clock (time.Now when nil).
	Now func() time.Time
	// AgentBinary is the static vmagent for a GOARCH (Spec.Provision).
	AgentBinary func(arch string) ([]byte, error)
	// Apps converges meshvm's app (Spec.Provision); nil leaves apps alone.
	Apps Apps
}

// Apps puts meshvm's app on a VM, or takes it off one that runs its own.
// The app is the recipe's, so its units are the provisioner's business.
type Apps interface {
	// Ensure converges the app serving port on vm and says what serves.
	Ensure(ctx context.Context, vm string, port int) (string, error)
	// Remove takes it off vm, saying whether it was there.
	Remove(ctx context.Context, vm string) (bool, error)
}

// How soon to look again while waiting on the world: the agent starting;
// istiod registering the VM and its health report, which a driver that
// watches WorkloadEntries sees sooner (the requeue is its safety net).
const (
	agentRequeue = 300 * time.Millisecond
	entryRequeue = 5 * time.Second
)

// pass is one Reconcile: the spec, what it found so far, and where it writes.
type pass struct {
	ctx    context.Context
	vm     Spec
	target Target
	store  Store
	deps   Deps
	st     Status
	res    Result
	// synced: the files were delivered for this generation by an earlier
	// pass, so the machine, agent and files steps need not run again.
	synced bool
	// provisioning: this pass creates the machine, converges the app and
	// installs the agent (Spec.Provision, not yet done this generation).
	provisioning bool
	m            machine.Machine
	agent        *agentclient.Client
	files        workloadfiles.Files
	side         onboard.Sidecar
	istiod       string
	report       onboard.Report
	stopped      bool
}

// step converges one condition; it ends the pass by calling p.stop.
type step struct {
	cond ConditionType
	run  func(*pass) error
}

// steps are a pass in order. The agent calls that deliver the files also
// start the sidecar (whether to restart depends on what was sent), so the
// sidecar step reads their report.
var steps = []step{
	{Machine, (*pass).machine},
	{App, (*pass).app},
	{AgentReachable, (*pass).agentReachable},
	{Credentials, (*pass).credentials},
	{FilesInSync, (*pass).filesInSync},
	{SidecarRunning, (*pass).sidecarRunning},
	{Registered, (*pass).registered},
	{Healthy, (*pass).healthy},
	{AddressMoved, (*pass).addressMoved},
}

// Reconcile runs one pass over VM vm from its last status: it observes,
// acts where the VM differs, and returns the new status with when to look
// again. An error is a failure to act (an API or agent call); the status
// returned with it holds what was found before it.
func Reconcile(ctx context.Context, vm Spec, last Status, target Target, store Store, deps Deps) (Result, error) {
	if deps.Now == nil {
		deps.Now = time.Now
	}
	p := &pass{ctx: ctx, vm: vm, target: target, store: store, deps: deps, st: last}
	if c, ok := last.Conditions.Get(FilesInSync); ok && c.Status == True && c.ObservedGeneration == vm.Generation && !vm.Recheck {
		p.synced = true
	}
	p.provisioning = vm.Provision && last.Provisioned != vm.Generation && !p.synced
	defer func() {
		if p.agent != nil {
			p.agent.Close()
		}
	}()
	for _, s := range steps {
		if err := s.run(p); err != nil {
			p.summarize(err)
			p.res.Status = p.st
			return p.res, err
		}
		if p.stopped {
			break
		}
	}
	p.summarize(nil)
	p.res.Status = p.st
	if !p.res.Done && !p.stopped {
		p.res.RequeueAfter = entryRequeue
	}
	return p.res, nil
}

// summarized are the conditions Ready sums up, in the steps' order: those
// that must be True for the VM to be in the mesh.
var summarized = []ConditionType{Machine, AgentReachable, Credentials, FilesInSync, SidecarRunning, Registered, Healthy}

// summarize sets Ready from the pass: True once the VM is in the mesh, else
// the error that ended the pass, else the first condition that holds it back.
func (p *pass) summarize(err error) {
	// A lapsed certificate cuts the VM off from mTLS while istiod may still
	// show its entry Healthy (the probe runs on the VM).
	cred, seen := p.st.Conditions.Get(Credentials)
	lapsed := seen && cred.Reason == CertificateExpired
	if err == nil && p.res.Done && !lapsed {
		healthy, _ := p.st.Conditions.Get(Healthy)
		p.set(Ready, True, InMesh, "%s", healthy.Message)
		return
	}
	if err != nil {
		p.set(Ready, False, ReconcileError, "%v", err)
		return
	}
	for _, t := range summarized {
		c, _ := p.st.Conditions.Get(t)
		if c.Status != True {
			p.set(Ready, False, c.Reason, "%s: %s", t, c.Message)
			return
		}
	}
	p.set(Ready, False, NotObserved, "the VM's address is not recorded yet")
}

// set records a condition for this generation; it returns whether its
// status changed.
func (p *pass) set(t ConditionType, s ConditionStatus, r Reason, format string, args ...any) bool {
	old, _ := p.st.Conditions.Get(t)
	p.st.Conditions.Set(Condition{Type: t, Status: s, Reason: r, Message: fmt.Sprintf(format, args...), ObservedGeneration: p.vm.Generation}, p.deps.Now())
	return old.Status != s
}

func (p *pass) record(t ConditionType, r Reason, msg string) { p.recordAbout(t, r, "", msg) }

func (p *pass) recordAbout(t ConditionType, r Reason, object, msg string) {
	if p.deps.Record != nil {
		p.deps.Record(Event{Condition: t, Reason: r, Object: object, Message: msg})
	}
}

// stop ends the pass, to look again after requeue (0: only when the
// declaration changes), cause being the error behind it.
func (p *pass) stop(requeue time.Duration, cause error) {
	p.stopped, p.res.RequeueAfter, p.res.Cause = true, requeue, cause
}

func (p *pass) machine() error {
	if p.synced {
		return nil
	}
	var m machine.Machine
	var err error
	if p.provisioning {
		if m, err = p.deps.Machines.Launch(p.ctx, p.vm.Machine); err != nil {
			return err
		}
		p.record(Machine, MachineRunning, fmt.Sprintf("%s at %s", m.State.Lower(), m.Address()))
	} else {
		m, err = p.deps.Machines.Info(p.ctx, p.vm.Name)
	}
	switch {
	case errors.Is(err, machine.ErrNotFound):
		p.set(Machine, False, MachineNotFound, "no machine %s", p.vm.Name)
		p.stop(0, err)
		return nil
	case err != nil:
		return err
	}
	p.m, p.st.MachineState = m, m.State.Lower()
	switch {
	case !m.Running():
		p.set(Machine, False, MachineNotRunning, "the machine is %s", m.State.Lower())
		p.stop(0, nil)
	case m.Address() == "":
		p.set(Machine, False, MachineNoAddress, "%s has no address", p.vm.Name)
		// Provisioning goes on to the app; the agent's install needs the address.
		if !p.provisioning {
			p.stop(agentRequeue, errNoAddress(p.vm.Name))
		}
	default:
		p.set(Machine, True, MachineRunning, "running at %s", m.Address())
	}
	return nil
}

// app converges meshvm's app while provisioning, and otherwise records who
// serves the probe.
func (p *pass) app() error {
	switch {
	case p.vm.Provision && !p.provisioning:
		return nil // as the provisioning pass left it
	case p.provisioning && p.deps.Apps != nil && p.vm.RunsApp:
		detail, err := p.deps.Apps.Ensure(p.ctx, p.vm.Name, p.vm.AppPort)
		if err != nil {
			p.set(App, False, AppFailed, "%v", err)
			return err
		}
		p.set(App, True, AppServing, "%s", detail)
		p.record(App, AppServing, detail)
	case p.provisioning && p.deps.Apps != nil:
		removed, err := p.deps.Apps.Remove(p.ctx, p.vm.Name)
		if err != nil {
			p.set(App, False, AppFailed, "%v", err)
			return err
		}
		reason := AppOwn
		if removed {
			reason = AppOwnRemoved
		}
		p.set(App, True, reason, "the VM's own app serves port %d", p.vm.AppPort)
		p.record(App, reason, fmt.Sprintf("the VM's own app serves port %d", p.vm.AppPort))
	case p.vm.RunsApp:
		p.set(App, Unknown, AppNotManaged, "meshvm's app is converged when the VM is provisioned")
	default:
		p.set(App, True, AppOwn, "the VM's own app serves port %d", p.vm.AppPort)
	}
	return nil
}

// agentReachable dials the agent and asks its version once: an agent that
// is starting is looked at again on the next pass, not waited for.
func (p *pass) agentReachable() error {
	if p.synced {
		return nil
	}
	addr := p.m.Address()
	if p.provisioning {
		if err := p.putAgent(); err != nil {
			return err
		}
	}
	c, err := DialAgent(p.m, p.store)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(p.ctx, 3*time.Second)
	v, err := c.Version(ctx)
	cancel()
	if err != nil {
		c.Close()
		p.set(AgentReachable, False, AgentUnreachable, "%v", err)
		p.stop(agentRequeue, err)
		return nil
	}
	p.agent = c
	if p.m.Arch == "" {
		// A provider that knows only the address (a controller's) learns
		// the architecture, for the sidecar's binaries, from the agent.
		p.m.Arch = v.GetArch()
	}
	p.set(AgentReachable, True, AgentAnswering, "answering on %s", net.JoinHostPort(addr, onboard.AgentPort))
	p.recordAbout(AgentReachable, AgentAnswering, v.GetVersion(), fmt.Sprintf("answering on %s:%s", addr, onboard.AgentPort))
	return nil
}

// putAgent installs or updates the agent through the machine provider; it
// (re)starts on its own time, and the next steps dial it.
func (p *pass) putAgent() error {
	if p.m.Address() == "" {
		return errNoAddress(p.vm.Name)
	}
	id, err := p.store.AgentIdentity(p.vm.Name, p.m.Addresses)
	if err != nil {
		return err
	}
	bin, err := p.deps.AgentBinary(p.m.Arch)
	if err != nil {
		return err
	}
	if err := onboard.PutAgent(p.ctx, p.deps.Machines, p.m, id, bin); err != nil {
		return err
	}
	p.st.Provisioned = p.vm.Generation
	return nil
}

// revision is the one the VM onboards onto: the pinned one; else its
// record's; a VM onboarded before meshvm kept one is on the default; a new
// one joins the target's.
func (p *pass) revision() (string, error) {
	if p.vm.Pinned {
		return p.vm.Revision, nil
	}
	return VMRevision(p.store, p.vm.Name, p.target.Revision)
}

// VMRevision is the revision VM vm is on: its record's; a VM onboarded
// before meshvm kept one is on the default; a new one joins siteRev.
func VMRevision(store Store, vm, siteRev string) (string, error) {
	j, ok, err := store.Joined(vm)
	if err != nil || ok {
		return j.Revision, err
	}
	addr, err := store.Address(vm)
	if err != nil || addr != "" {
		return "", err
	}
	return siteRev, nil
}

// credentials generates the workload files, a token among them: the last
// one while it has more than half its life, unless a fresh one is asked for.
func (p *pass) credentials() error {
	if p.vm.AgentOnly {
		p.stop(0, nil)
		return nil
	}
	if p.synced {
		return nil
	}
	if p.vm.KeepFiles {
		p.st.Address = p.m.Address()
		p.set(Credentials, True, FilesKept, "the token as last issued")
		return nil
	}
	rev, err := p.revision()
	if err != nil {
		return err
	}
	if !p.vm.Pinned && workloadfiles.RevisionName(rev) != workloadfiles.RevisionName(p.target.Revision) {
		p.record(Credentials, RevisionKept, fmt.Sprintf("stays on revision %s (the VMs join %s)",
			workloadfiles.RevisionName(rev), workloadfiles.RevisionName(p.target.Revision)))
	}
	if p.istiod, err = p.target.IstiodAddress(p.ctx, p.vm.Name); err != nil {
		return err
	}
	version, err := p.target.IstiodVersion(p.ctx, rev)
	if err != nil {
		return err
	}
	if p.side, err = p.target.Sidecar(p.ctx, p.m.Arch, version); err != nil {
		return err
	}
	if p.vm.Proxyless {
		p.side = p.side.Proxyless()
	}
	p.st.Revision, p.st.Istio, p.st.Address = rev, version, p.m.Address()
	p.record(Credentials, Joining, fmt.Sprintf("revision %s, Istio %s (its istiod's)", workloadfiles.RevisionName(rev), version))
	var last []byte
	if !p.vm.FreshToken {
		if last, err = p.store.Token(p.vm.Name); err != nil {
			return err
		}
	}
	p.files, err = workload.Files(p.ctx, p.deps.Kube, p.deps.Workload, workload.FilesFor{ClusterID: p.target.ClusterID,
		VMIP: p.st.Address, IstiodIP: p.istiod, VM: p.vm.Name, TokenLifetime: p.vm.TokenLifetime, ReuseToken: last,
		Warn: func(msg string) { p.record(Credentials, TokenCapped, msg) }, Revision: rev, Proxyless: p.vm.Proxyless,
		CertificateLifetime: p.vm.CertificateLifetime, FollowAddress: p.vm.FollowAddress})
	if err != nil {
		p.set(Credentials, False, FilesUnavailable, "%v", err)
		return err
	}
	if err := p.store.SetFiles(p.vm.Name, p.files); err != nil {
		return err
	}
	return p.credentialTimes()
}

// credentialTimes sets Credentials from the token just generated and, on
// a periodic look (Spec.Recheck: a controller's, which reports them), the
// certificate the agent reads: True while that certificate (if any yet) is
// valid, its message giving both times. A CLI pass asks nothing more of
// the agent; its vm status reads the certificate.
func (p *pass) credentialTimes() error {
	msg := fmt.Sprintf("token bound to Secret %s/%s", p.deps.Workload.Namespace, workload.CredentialName(p.vm.Name))
	if tok, err := credinfo.ParseToken(p.files.Token); err == nil && !tok.ExpiresAt.IsZero() {
		msg += ", valid until " + stamp(tok.ExpiresAt)
	}
	if !p.vm.Recheck {
		p.set(Credentials, True, TokenBound, "%s", msg)
		return nil
	}
	ctx, cancel := context.WithTimeout(p.ctx, 3*time.Second)
	cert, _, err := p.agent.Credentials(ctx)
	cancel()
	if err != nil {
		p.set(Credentials, True, TokenBound, "%s; the certificate's times unknown: %v", msg, err)
		return nil
	}
	p.st.CertNotBefore, p.st.CertNotAfter = time.Time{}, time.Time{}
	if cert == nil {
		p.set(Credentials, True, TokenBound, "%s; no workload certificate yet (pilot-agent asks istiod for one when it starts)", msg)
		return nil
	}
	p.st.CertNotBefore, p.st.CertNotAfter = cert.GetNotBefore().AsTime(), cert.GetNotAfter().AsTime()
	// istiod starts a certificate istioClockSkew before it signs it.
	life := (p.st.CertNotAfter.Sub(p.st.CertNotBefore) - istioClockSkew).Round(time.Second)
	msg += fmt.Sprintf("; certificate valid until %s (lifetime %s", stamp(p.st.CertNotAfter), life)
	if want := p.vm.CertificateLifetime; want > 0 && (life-want > time.Minute || want-life > time.Minute) {
		msg += fmt.Sprintf(", not the %s asked: pilot-agent asks anew when it renews, at about half the certificate's life; "+
			"istiod cuts it to its CA certificate's end and refuses more than its MAX_WORKLOAD_CERT_TTL (90 days unless set), "+
			"and pilot-agent then keeps the certificate it has", want)
	}
	msg += ")"
	if !p.deps.Now().Before(p.st.CertNotAfter) {
		p.set(Credentials, False, CertificateExpired, "%s: expired; pilot-agent gets a new one with a valid token (check the sidecar's logs if it does not)", msg)
		return nil
	}
	p.set(Credentials, True, TokenBound, "%s", msg)
	return nil
}

// istioClockSkew is how long before signing istiod starts a workload
// certificate (ClockSkewGracePeriod in Istio's security/pkg/pki/util).
const istioClockSkew = 2 * time.Minute

func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }

// filesInSync delivers what differs through the agent and starts the
// sidecar, restarting it when a file it reads at start changed.
func (p *pass) filesInSync() error {
	if p.synced {
		return nil
	}
	if p.vm.KeepFiles {
		p.set(FilesInSync, True, FilesKept, "nothing sent: the files as last onboarded")
		return nil
	}
	prev, _, err := workload.FindEntry(p.ctx, p.deps.Kube, p.deps.Workload, p.st.Address)
	if err != nil {
		return err
	}
	rev := p.st.Revision
	p.report, err = onboard.Onboard(p.ctx, p.agent, p.files, p.side, onboard.Hosts{IstiodIP: p.istiod,
		IstiodName: workloadfiles.IstiodHost(p.target.IstioNamespace, rev), VMIP: p.st.Address, VMName: p.vm.Name}, p.vm.Restart)
	if err != nil {
		if errors.Is(err, onboard.ErrSidecar) {
			// Not the files: the sidecar did not start (a stopped unit the
			// pass could not start again is not running, whatever it was).
			p.set(SidecarRunning, False, SidecarFailed, "%v", err)
		}
		p.set(FilesInSync, False, FilesFailed, "%v", err)
		return err
	}
	// The files now point at rev, whether or not the VM comes back Healthy:
	// a rollback is a move back from it.
	if err := p.store.SetJoined(p.vm.Name, Joined{Revision: rev, Istio: p.st.Istio}); err != nil {
		return err
	}
	// A VM onboarded for the first time has no entry elsewhere to clean up:
	// its address is recorded with the files, in the same write of a store
	// that batches them, rather than alone once it is in.
	if old, err := p.store.Address(p.vm.Name); err != nil {
		return err
	} else if old == "" {
		if err := p.store.SetAddress(p.vm.Name, p.st.Address); err != nil {
			return err
		}
	}
	if p.report.Restarted {
		// Until the entry shows a new connection, its Healthy is the old proxy's.
		r := Restart{At: p.deps.Now(), EntryBeforeRestart: prev.Name, EntryConnectedAt: prev.ConnectedAt, EntryProbedAt: prev.ProbedAt}
		if err := p.store.SetLastRestart(p.vm.Name, r); err != nil {
			return err
		}
	}
	sent := "nothing sent"
	if len(p.report.Sent) > 0 {
		sent = "sent " + strings.Join(p.report.Sent, ", ")
	}
	reason := FilesInPlace
	if len(p.report.Sent) > 0 {
		reason = FilesSent
	}
	p.set(FilesInSync, True, reason, "%s; %d file(s) already in place", sent, len(p.report.Skipped))
	return nil
}

func (p *pass) sidecarRunning() error {
	if p.synced {
		return nil
	}
	if p.vm.KeepFiles {
		// Started by the boot; the entry's connection says it runs.
		p.set(SidecarRunning, True, SidecarStarted, "started by the machine's boot")
		return nil
	}
	state := "sidecar " + p.report.Sidecar.GetActiveState()
	reason := SidecarStarted
	if p.report.Restarted {
		state += " (restarted)"
		reason = SidecarRestarted
	}
	if p.report.Sidecar.GetActiveState() == "active" {
		p.set(SidecarRunning, True, reason, "%s", state)
	} else {
		p.set(SidecarRunning, False, SidecarFailed, "%s/%s", p.report.Sidecar.GetActiveState(), p.report.Sidecar.GetSubState())
	}
	files, _ := p.st.Conditions.Get(FilesInSync)
	p.record(SidecarRunning, Delivered, files.Message+"; "+state)
	return nil
}

// registered looks for the VM's WorkloadEntry from a connected sidecar,
// newer than the one seen before the last restart.
func (p *pass) registered() error {
	e, found, err := workload.FindEntry(p.ctx, p.deps.Kube, p.deps.Workload, p.st.Address)
	if err != nil {
		p.set(Registered, Unknown, EntryUnavailable, "%v", err)
		return err
	}
	before, _, err := p.store.LastRestart(p.vm.Name)
	if err != nil {
		return err
	}
	p.st.Entry = e
	switch {
	case !found:
		p.set(Registered, False, NoEntry, "no WorkloadEntry for %s", p.st.Address)
		// A proxy that went away leaves its entry without connectedAt.
	case e.ConnectedAt == "" || (before.EntryBeforeRestart != "" && e.ConnectedAt == before.EntryConnectedAt):
		p.set(Registered, False, NotReconnected, "WorkloadEntry %s: no connection since the sidecar's last restart", e.Name)
	default:
		p.set(Registered, True, EntryRegistered, "WorkloadEntry %s registered, sidecar connected", e.Name)
	}
	return nil
}

// healthy judges the entry's Healthy condition; after a restart it counts
// only from a new connection and a new health report, or a stale Healthy
// of the old proxy would pass for the new one.
func (p *pass) healthy() error {
	e := p.st.Entry
	before, _, err := p.store.LastRestart(p.vm.Name)
	if err != nil {
		return err
	}
	fresh := e.ConnectedAt != "" && (before.EntryBeforeRestart == "" ||
		(e.ConnectedAt != before.EntryConnectedAt && e.ProbedAt.After(before.EntryProbedAt)))
	registered, _ := p.st.Conditions.Get(Registered)
	var changed bool
	switch {
	case p.vm.Proxyless && !(registered.Status == True && e.Healthy == "True"):
		changed = p.set(Healthy, False, WaitsOnGRPCApp, "proxyless: pilot-agent runs without Envoy; the VM registers (and turns Healthy on its probe, port %d) "+
			"while its gRPC app holds pilot-agent's xDS connection (GRPC_XDS_BOOTSTRAP=%s); now: %s",
			p.vm.ProbePort, workloadfiles.GRPCBootstrapPath, registered.Message)
	case registered.Reason == NoEntry:
		changed = p.set(Healthy, False, NoEntry, "%s", registered.Message)
	// A VM whose app is its own needs only the registration to be fresh.
	case e.Healthy == "True" && (fresh || (!p.vm.RunsApp && registered.Status == True)):
		changed = p.set(Healthy, True, EntryHealthy, "WorkloadEntry %s Healthy", e.Name)
	case !p.vm.RunsApp && registered.Status == True:
		changed = p.set(Healthy, False, WaitsOnOwnApp, "WorkloadEntry %s registered, sidecar connected; Healthy waits on the VM's app on port %d", e.Name, p.vm.ProbePort)
	case e.Healthy == "True":
		changed = p.set(Healthy, False, NotReconnected, "WorkloadEntry %s: the restarted sidecar has not reconnected and reported health", e.Name)
	default:
		changed = p.set(Healthy, False, EntryNotHealthy, "%s", e.Message)
	}
	if !p.onboarded() {
		p.stop(entryRequeue, nil)
		return nil
	}
	if c, _ := p.st.Conditions.Get(Healthy); changed || c.Reason == WaitsOnOwnApp || c.Reason == WaitsOnGRPCApp {
		p.recordAbout(Healthy, c.Reason, e.Name, c.Message)
	}
	return nil
}

// onboarded says the VM is as far in as meshvm can take it: Healthy, or
// registered when Healthy waits on the VM's own app.
func (p *pass) onboarded() bool {
	if p.st.Conditions.IsTrue(Healthy) {
		return true
	}
	if p.vm.Proxyless {
		return p.st.Conditions.IsTrue(SidecarRunning)
	}
	return !p.vm.RunsApp && p.st.Conditions.IsTrue(Registered)
}

// addressMoved records the VM's address and deletes the WorkloadEntry left
// at the previous one, unless another VM now holds that address.
func (p *pass) addressMoved() error {
	addr := p.st.Address
	old, err := p.store.Address(p.vm.Name)
	if err != nil {
		return err
	}
	switch {
	case old == "":
		p.set(AddressMoved, False, AddressFirst, "first onboarded at %s", addr)
	case old == addr:
		// A VM that never moved keeps FirstAddress: a later look at it
		// (a controller's periodic one) rewrites nothing.
		reason, msg := AddressUnchanged, "still at"
		if c, _ := p.st.Conditions.Get(AddressMoved); c.Reason == AddressFirst {
			reason, msg = AddressFirst, "first onboarded at"
		}
		p.set(AddressMoved, False, reason, "%s %s", msg, addr)
	default:
		holder, err := p.store.AddressHolder(old, p.vm.Name)
		if err != nil {
			return err
		}
		if holder != "" {
			p.set(AddressMoved, True, AddressHeld, "moved from %s, which %s holds now: its WorkloadEntry stays", old, holder)
			break
		}
		gone, err := workload.DeleteEntry(p.ctx, p.deps.Kube, p.deps.Workload, old)
		if err != nil {
			return err
		}
		if gone == "" {
			p.set(AddressMoved, True, NothingLeft, "moved from %s, where no WorkloadEntry was left", old)
		} else {
			p.set(AddressMoved, True, StaleEntryDeleted, "address changed from %s: stale WorkloadEntry %s deleted", old, gone)
			p.recordAbout(AddressMoved, StaleEntryDeleted, gone, fmt.Sprintf("address changed from %s: stale WorkloadEntry %s deleted", old, gone))
		}
	}
	if err := p.store.SetAddress(p.vm.Name, addr); err != nil {
		return err
	}
	p.res.Done = true
	return nil
}
