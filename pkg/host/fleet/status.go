package fleet

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/meshvm/meshvm/pkg/agentspec"
	"github.com/meshvm/meshvm/pkg/host/config"
	"github.com/meshvm/meshvm/pkg/host/credcheck"
	"github.com/meshvm/meshvm/pkg/host/vmcore"
	"github.com/meshvm/meshvm/pkg/machine"
	"github.com/meshvm/meshvm/pkg/mesh/istioinstall"
	"github.com/meshvm/meshvm/pkg/mesh/workload"
	"github.com/meshvm/meshvm/pkg/mesh/workloadfiles"
	"github.com/meshvm/meshvm/pkg/reason"
	agentv1 "github.com/meshvm/meshvm/proto/meshvm/agent/v1"
)

// VMStatus joins the cluster's view of a VM with its agent's.
type VMStatus struct {
	Name    string `json:"name"`
	Address string `json:"address,omitempty"`
	Machine string `json:"machine"`
	// WorkloadEntry is the autoregistered entry's name; Healthy its condition.
	WorkloadEntry string `json:"workloadEntry,omitempty"`
	Healthy       string `json:"healthy,omitempty"`
	HealthMessage string `json:"healthMessage,omitempty"`
	Agent         string `json:"agent"`
	// AgentError is why the agent did not answer.
	AgentError string `json:"agentError,omitempty"`
	Sidecar    string `json:"sidecar,omitempty"`
	// Disconnected is when istiod saw the VM's proxy go: a Healthy entry
	// with it is stale.
	Disconnected string `json:"disconnectedAt,omitempty"`
	CertExpiry   string `json:"certificateExpiresIn,omitempty"`
	TokenExpiry  string `json:"tokenExpiresIn,omitempty"`
	// The credentials' times (RFC 3339) and the verdict on them together.
	CertNotAfter       *time.Time      `json:"certificateNotAfter,omitempty"`
	CertRenewBy        *time.Time      `json:"certificateRenewBy,omitempty"`
	TokenIssuedAt      *time.Time      `json:"tokenIssuedAt,omitempty"`
	TokenExpiresAt     *time.Time      `json:"tokenExpiresAt,omitempty"`
	Credentials        credcheck.State `json:"credentials,omitempty"`
	CredentialsDetail  string          `json:"credentialsDetail,omitempty"`
	credentialsVerdict credcheck.Verdict
	IstiodDNS          string `json:"istiodDNS,omitempty"`
	// Revision is the Istio revision the VM's files point at, Istio the
	// proxy version it was given, and IstiodController the istiod instance
	// that registered its WorkloadEntry (and holds its connection).
	Revision         string `json:"revision"`
	Istio            string `json:"istio,omitempty"`
	IstiodController string `json:"istiodController,omitempty"`
	App              string `json:"app,omitempty"`
	// Capture is the agent's verdict on the capture rules in force; unset
	// when the agent was not reached or reports none.
	Capture *Capture `json:"capture,omitempty"`
	OK      bool     `json:"ok"`
	// Next is what is wrong, the cause what the CLI words the step that
	// fixes it from (after Next).
	Next string `json:"next,omitempty"`
	reason.Cause
	// TokenChanged: the token pilot-agent reads is not the root-only copy
	// the agent delivered (something on the VM changed it).
	TokenChanged bool `json:"tokenChanged,omitempty"`
	// MeshVM is the VM's MeshVM in fleet mode: its Ready decides OK.
	MeshVM *Declared `json:"meshvm,omitempty"`
}

// Statuses gathers the status of vms, every VM at once. say is told what
// could not be learned, and what follows from it.
func (f *Fleet) Statuses(ctx context.Context, vms []config.VM, p Reporter) ([]VMStatus, error) {
	cfg, site := f.Config, f.Site
	clients, err := KubeClients(site.Kubeconfig())
	if err != nil {
		return nil, err
	}
	entries, entriesErr := workload.Entries(ctx, clients, WorkloadSpec(cfg))
	// Without the list, revocation is unknown, not assumed.
	bindings, bindErr := workload.CredentialUIDs(ctx, clients.Kube, cfg.Workload.Namespace)
	if bindErr != nil {
		p.Say("%v: revoked tokens are not told apart", bindErr)
	}
	store, err := f.records()
	if err != nil {
		return nil, err
	}
	siteRev := site.Revision(ctx)
	out := make([]VMStatus, len(vms))
	bounded(cfg.Parallel, len(vms), func(i int) {
		vm := vms[i]
		out[i] = vmStatus(ctx, cfg, store, site.Machines(), entries, entriesErr, bindings, bindErr == nil, vm, vmRevision(store, vm.Name, siteRev))
	})
	return out, nil
}

func vmStatus(ctx context.Context, cfg config.Config, store vmcore.Store, machines machine.Provider,
	entries map[string]workload.Entry, entriesErr error, bindings map[string]string, bindingsKnown bool, vm config.VM, rev string) VMStatus {
	name := vm.Name
	s := VMStatus{Name: name, Revision: revisionName(rev)}
	if j, ok := joinedOf(store, name); ok {
		s.Istio = j.Istio
	}
	m, err := machines.Info(ctx, name)
	if err != nil {
		s.Machine, s.Agent, s.Cause = "absent", "-", reason.Because(reason.VMAbsent, name)
		return s
	}
	s.Machine, s.Address = m.State.Lower(), m.Address()
	if !m.Running() || s.Address == "" {
		s.Agent, s.Cause = "-", reason.Because(reason.VMStopped, name)
		return s
	}
	if entriesErr != nil {
		s.WorkloadEntry = "error: " + entriesErr.Error()
	} else if e, ok := entries[s.Address]; ok {
		s.WorkloadEntry, s.Healthy, s.HealthMessage, s.Disconnected = e.Name, e.Healthy, e.Message, e.DisconnectedAt
		s.IstiodController = e.Controller
	}
	c, err := vmcore.DialAgent(m, store)
	if err != nil {
		s.Agent, s.Cause = "error: "+err.Error(), reason.Because(reason.AgentUnreachable, name)
		return s
	}
	defer c.Close()
	ov := c.Overview(ctx, workloadfiles.IstiodHost(istioinstall.Namespace, rev),
		&agentv1.ProbeRequest{Kind: agentv1.ProbeKind_PROBE_KIND_HTTP, Port: uint32(cfg.Workload.Probe.Port), Path: cfg.Workload.Probe.Path})
	if ov.StatusErr != nil {
		s.Agent, s.AgentError = "unreachable", ov.StatusErr.Error()
		s.Next, s.Cause = fmt.Sprintf("agent unreachable (%v)", ov.StatusErr), reason.Because(reason.AgentDown, name)
		return s
	}
	st := ov.Status
	s.Agent = "up " + st.GetVersion()
	sc := st.GetSidecar()
	s.Sidecar = sc.GetActiveState() + "/" + sc.GetSubState()
	if sc.GetError() != "" {
		s.Sidecar = "error: " + sc.GetError()
	}
	s.credentials(credentialFacts(cfg, vm.Name, st, bindings, bindingsKnown, time.Now()))
	s.TokenChanged = st.GetToken().GetDiffersFromPersistent()
	switch r := ov.DNS; {
	case ov.DNSErr != nil:
		s.IstiodDNS = "error: " + ov.DNSErr.Error()
	case r.GetError() != "":
		s.IstiodDNS = "error: " + r.GetError()
	default:
		s.IstiodDNS = strings.Join(r.GetAddresses(), ",")
	}
	switch p := ov.App; {
	case ov.AppErr != nil:
		s.App = "error: " + ov.AppErr.Error()
	case p.GetError() != "":
		s.App = p.GetError()
	default:
		s.App = fmt.Sprintf("HTTP %d", p.GetStatusCode())
	}
	s.Capture = captureOf(st.GetCapture())
	s.OK, s.Next, s.Cause = judge(cfg, vm, s, sc.GetActiveState())
	return s
}

// credentialFacts gathers what the agent and the cluster say of a VM's
// credentials.
func credentialFacts(cfg config.Config, vm string, st *agentv1.GetStatusResponse, bindings map[string]string, known bool, now time.Time) credcheck.Facts {
	f := credcheck.Facts{VM: vm, Namespace: cfg.Workload.Namespace, Now: now,
		Binding: credcheck.Binding{Checked: known, UID: bindings[vm]}}
	if c := st.GetWorkloadCertificate(); c != nil {
		f.Cert = &credcheck.Certificate{NotBefore: c.GetNotBefore().AsTime(), NotAfter: c.GetNotAfter().AsTime()}
	}
	if t := st.GetToken(); t != nil {
		f.Token = &credcheck.Token{ExpiresAt: t.GetExpiresAt().AsTime(), BoundSecret: t.GetBoundSecretName(), BoundUID: t.GetBoundSecretUid()}
		if t.GetIssuedAt() != nil {
			f.Token.IssuedAt = t.GetIssuedAt().AsTime()
		}
	}
	return f
}

// credentials fills the credential columns from f.
func (s *VMStatus) credentials(f credcheck.Facts) {
	left := func(t time.Time) string {
		if d := t.Sub(f.Now); d > 0 {
			return d.Round(time.Minute).String()
		}
		return "expired"
	}
	utc := func(t time.Time) *time.Time { t = t.UTC().Truncate(time.Second); return &t }
	if c := f.Cert; c != nil {
		s.CertExpiry, s.CertNotAfter = left(c.NotAfter), utc(c.NotAfter)
	}
	if t := f.Token; t != nil {
		s.TokenExpiry, s.TokenExpiresAt = left(t.ExpiresAt), utc(t.ExpiresAt)
		if !t.IssuedAt.IsZero() {
			s.TokenIssuedAt = utc(t.IssuedAt)
		}
	}
	v := credcheck.Judge(f)
	if !v.RenewBy.IsZero() {
		s.CertRenewBy = utc(v.RenewBy)
	}
	s.Credentials, s.CredentialsDetail, s.credentialsVerdict = v.State, v.Detail, v
}

// judge says whether the VM is healthy, else what is wrong and its cause.
func judge(cfg config.Config, vm config.VM, s VMStatus, sidecarActive string) (bool, string, reason.Cause) {
	port := cfg.Workload.Probe.Port
	cred := s.credentialsVerdict
	because := func(r reason.Reason) reason.Cause { return reason.Because(r, vm.Name) }
	switch {
	case cred.Fail:
		return false, fmt.Sprintf("credentials %s: %s", cred.State, cred.Detail), cred.Cause
	case s.TokenChanged:
		return false, fmt.Sprintf("the token pilot-agent reads (%s) is not the copy meshvm delivered: something on the VM changed it", agentspec.TokenPath), because(reason.TokenChanged)
	case sidecarActive != "active":
		return false, "the sidecar is not running", because(reason.SidecarDown)
	case s.WorkloadEntry == "" && cfg.Proxyless(vm):
		return false, fmt.Sprintf("no WorkloadEntry: a proxyless VM registers only while its gRPC app holds pilot-agent's xDS connection: start your app with GRPC_XDS_BOOTSTRAP=%s (a client-only app registers only while it calls)", workloadfiles.GRPCBootstrapPath), reason.Cause{}
	case s.WorkloadEntry == "":
		return false, "no WorkloadEntry: the sidecar has not reached istiod", because(reason.NoEntry)
	case s.Healthy != "True" && !cfg.RunsApp(vm):
		return false, fmt.Sprintf("WorkloadEntry not Healthy (%s)", orDash(s.HealthMessage)), reason.Because(reason.OwnAppUnhealthy, vm.Name, fmt.Sprint(port))
	case s.Healthy != "True":
		return false, fmt.Sprintf("WorkloadEntry not Healthy (%s): is the app answering on port %d?", orDash(s.HealthMessage), port), reason.Cause{}
	case s.Disconnected != "":
		return false, fmt.Sprintf("WorkloadEntry %s says Healthy, but istiod saw its proxy disconnect at %s, so that is stale", s.WorkloadEntry, s.Disconnected), because(reason.EntryStale)
	case cred.State == credcheck.CertExpired || cred.State == credcheck.NoCertificate || cred.State == credcheck.RenewalOverdue:
		return false, fmt.Sprintf("credentials %s: %s", cred.State, cred.Detail), cred.Cause
	case s.Capture != nil && s.Capture.State == CaptureFail:
		return false, fmt.Sprintf("capture rules: %s: %s", s.Capture.Detail, s.Capture.Fix), captureCause(s.Capture, vm.Name)
	}
	return true, "", reason.Cause{}
}

// CaptureSummary is the capture verdict for the status table.
func (s VMStatus) CaptureSummary() string { return s.Capture.column() }

// captureCause is the cause of a failed capture verdict: where the agent's
// fix is to restart the sidecar, the CLI names the command that does.
func captureCause(c *Capture, vm string) reason.Cause {
	if strings.Contains(c.Fix, "restart the sidecar") {
		return reason.Because(reason.CaptureRestart, vm)
	}
	return reason.Cause{}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
