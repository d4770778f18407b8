package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/meshvm/meshvm/pkg/credinfo"
	"github.com/meshvm/meshvm/pkg/report"
	agentv1 "github.com/meshvm/meshvm/proto/meshvm/agent/v1"
	"github.com/meshvm/meshvm/vmagent/internal/hostsfile"
)

// doctorCmd prints, for a person on the VM, what hostctl sees through the
// API: status, network and DNS, computed by the same server code.
type doctorCmd struct {
	g      *globals
	output string
}

func (c *doctorCmd) command() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Check the sidecar install, credentials, network and DNS on this VM",
		Args:  cobra.NoArgs,
		RunE:  c.run,
	}
	cmd.Flags().StringVarP(&c.output, "output", "o", "table", "output format: table|json|yaml")
	return cmd
}

// check is one line of the doctor's report.
type check struct {
	Check  string `json:"check"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail"`
}

type doctorReport struct {
	Checks  []check                    `json:"checks"`
	Status  json.RawMessage            `json:"status"`
	Network json.RawMessage            `json:"network"`
	DNS     map[string]json.RawMessage `json:"dns,omitempty"`
	Probes  map[string]json.RawMessage `json:"probes,omitempty"`
}

func (c *doctorCmd) run(cmd *cobra.Command, _ []string) error {
	if c.output != "table" && c.output != "json" && c.output != "yaml" {
		return fmt.Errorf("--output %q: want table, json or yaml", c.output)
	}
	if !cmd.Flags().Changed("log-level") {
		// A person reads the report on stdout; the agent's own log is noise here.
		c.g.overrides.LogLevel = "warn"
	}
	cfg, log, err := c.g.load(cmd)
	if err != nil {
		return err
	}
	a, err := newAgent(cfg, log)
	if err != nil {
		return err
	}
	srv := a.server(log)
	ctx := cmd.Context()
	rep := doctorReport{DNS: map[string]json.RawMessage{}, Probes: map[string]json.RawMessage{}}

	st, err := srv.GetStatus(ctx, &agentv1.GetStatusRequest{})
	if err != nil {
		return err
	}
	rep.Status, _ = protojson.Marshal(st)
	for _, s := range st.GetInstallSteps() {
		ok := s.GetOutcome() == agentv1.StepOutcome_STEP_OUTCOME_UNCHANGED || s.GetOutcome() == agentv1.StepOutcome_STEP_OUTCOME_SKIPPED
		rep.Checks = append(rep.Checks, check{"install: " + s.GetName(), ok, s.GetDetail()})
	}
	sc := st.GetSidecar()
	if sc.GetError() != "" {
		rep.Checks = append(rep.Checks, check{"sidecar unit", false, sc.GetError()})
	} else {
		rep.Checks = append(rep.Checks, check{"sidecar unit", sc.GetActiveState() == "active",
			fmt.Sprintf("%s %s/%s, %s", sc.GetUnit(), sc.GetActiveState(), sc.GetSubState(), sc.GetUnitFileState())})
	}
	now := time.Now()
	if cert := st.GetWorkloadCertificate(); cert != nil {
		left := cert.GetNotAfter().AsTime().Sub(now)
		rep.Checks = append(rep.Checks, check{"workload certificate", left > 0,
			fmt.Sprintf("%s, expires in %s", strings.Join(cert.GetUriSans(), " "), left.Round(time.Minute))})
	} else {
		rep.Checks = append(rep.Checks, check{"workload certificate", false, "none yet: pilot-agent writes it once it reaches istiod"})
	}
	if tok := st.GetToken(); tok != nil {
		left := tok.GetExpiresAt().AsTime().Sub(now)
		detail := fmt.Sprintf("%s, expires in %s", tok.GetSubject(), left.Round(time.Minute))
		if left <= 0 {
			detail = tok.GetSubject() + " expired: pilot-agent can only renew with a valid certificate; run hostctl vm onboard"
		}
		rep.Checks = append(rep.Checks, check{"istio-token", left > 0, detail})
	} else {
		rep.Checks = append(rep.Checks, check{"istio-token", false, "missing: run hostctl vm onboard"})
	}
	if cv := st.GetCapture(); cv != nil {
		rep.Checks = append(rep.Checks, captureCheck(cv))
	}
	for k, v := range st.GetLastErrors() {
		if strings.HasSuffix(v, credinfo.FreshTokenFix) {
			v += " (hostctl vm onboard does)"
		}
		rep.Checks = append(rep.Checks, check{"last error: " + k, false, v})
	}

	if nw, err := srv.CheckNetwork(ctx, &agentv1.CheckNetworkRequest{}); err != nil {
		rep.Checks = append(rep.Checks, check{"network", false, err.Error()})
	} else {
		rep.Network, _ = protojson.Marshal(nw)
		usable := false
		for _, b := range nw.GetFirewallBackends() {
			usable = usable || b.GetAvailable()
			if len(b.GetIstioChains()) > 0 {
				rep.Checks = append(rep.Checks, check{"capture rules (" + b.GetName() + ")", true, strings.Join(b.GetIstioChains(), " ")})
			}
		}
		rep.Checks = append(rep.Checks, check{"iptables backend", usable, backendSummary(nw)})
		rep.Checks = append(rep.Checks, check{"sidecar address", nw.GetSidecarAddress() != "", nw.GetSidecarAddress() + " (" + nw.GetSidecarAddressSource() + ")"})
	}

	for _, name := range managedNames(a) {
		r, _ := srv.ResolveDNS(ctx, &agentv1.ResolveDNSRequest{Name: name, Via: agentv1.DNSVia_DNS_VIA_SYSTEM})
		rep.DNS[name], _ = protojson.Marshal(r)
		rep.Checks = append(rep.Checks, check{"dns " + name, r.GetError() == "", dnsSummary(r)})
	}
	for _, p := range []struct {
		name string
		port uint32
		path string
	}{{"pilot-agent readiness :15021/healthz/ready", 15021, "/healthz/ready"}, {"pilot-agent status :15020/healthz/ready", 15020, "/healthz/ready"}} {
		r, err := srv.Probe(ctx, &agentv1.ProbeRequest{Kind: agentv1.ProbeKind_PROBE_KIND_HTTP, Port: p.port, Path: p.path})
		if err != nil {
			rep.Checks = append(rep.Checks, check{p.name, false, err.Error()})
			continue
		}
		rep.Probes[p.name], _ = protojson.Marshal(r)
		detail := fmt.Sprintf("HTTP %d in %s", r.GetStatusCode(), r.GetLatency().AsDuration().Round(time.Millisecond))
		if r.GetError() != "" {
			detail = r.GetError()
		}
		rep.Checks = append(rep.Checks, check{p.name, r.GetOk(), detail})
	}
	return render(cmd.OutOrStdout(), c.output, rep)
}

// managedNames are the names in the managed /etc/hosts block (istiod and
// the VM's own name): each must resolve for the sidecar to work.
func managedNames(a *agent) []string {
	content, err := a.root.ReadFile("/etc/hosts")
	if err != nil {
		return nil
	}
	entries, err := hostsfile.Entries(content)
	if err != nil {
		return nil
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Names...)
	}
	return names
}

// captureCheck is the agent's verdict on the capture rules: the first
// failed check with its fix, else the backends holding them.
func captureCheck(cv *agentv1.CaptureVerdict) check {
	bad := cv.GetState() == agentv1.CaptureState_CAPTURE_STATE_FAIL
	for _, c := range cv.GetChecks() {
		if c.GetState() == agentv1.CaptureState_CAPTURE_STATE_FAIL {
			return check{"capture verdict", false, c.GetName() + ": " + c.GetDetail() + ": " + c.GetFix()}
		}
	}
	detail := strings.ToLower(strings.TrimPrefix(cv.GetState().String(), "CAPTURE_STATE_"))
	if len(cv.GetBackends()) > 0 {
		detail += ": rules in " + strings.Join(cv.GetBackends(), ", ")
	} else if len(cv.GetChecks()) > 0 {
		detail += ": " + cv.GetChecks()[0].GetDetail()
	}
	if v := cv.GetValidation(); v != nil {
		detail += fmt.Sprintf("; Istio's validation passed=%v", v.GetPassed())
	}
	return check{"capture verdict", !bad, detail}
}

func backendSummary(nw *agentv1.CheckNetworkResponse) string {
	var parts []string
	for _, b := range nw.GetFirewallBackends() {
		s := b.GetName() + ": "
		if b.GetAvailable() {
			s += "available"
		} else {
			s += "unavailable (" + b.GetError() + ")"
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, "; ")
}

func dnsSummary(r *agentv1.ResolveDNSResponse) string {
	if r.GetError() != "" {
		return r.GetError()
	}
	return fmt.Sprintf("%s via %s in %s", strings.Join(r.GetAddresses(), " "), r.GetServer(), r.GetLatency().AsDuration().Round(time.Microsecond))
}

func render(w io.Writer, output string, rep doctorReport) error {
	if err := write(w, output, rep); err != nil {
		return err
	}
	// Whatever the format, a failed check is a non-zero exit.
	failed := 0
	for _, c := range rep.Checks {
		if !c.OK {
			failed++
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d checks failed", failed, len(rep.Checks))
	}
	return nil
}

func write(w io.Writer, output string, rep doctorReport) error {
	if ok, err := report.Encode(w, output, rep); ok {
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CHECK\tOK\tDETAIL")
	for _, c := range rep.Checks {
		mark := "ok"
		if !c.OK {
			mark = "FAIL"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", c.Check, mark, c.Detail)
	}
	return tw.Flush()
}
