package server

import (
	"bufio"
	"bytes"
	"net/netip"
	"strings"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/meshvm/meshvm/pkg/agenterr"
	"github.com/meshvm/meshvm/pkg/credinfo"
	"github.com/meshvm/meshvm/pkg/envfile"
	"github.com/meshvm/meshvm/pkg/fsroot"
	agentv1 "github.com/meshvm/meshvm/proto/meshvm/agent/v1"
	"github.com/meshvm/meshvm/vmagent/internal/capture"
	"github.com/meshvm/meshvm/vmagent/internal/hostsfile"
	"github.com/meshvm/meshvm/vmagent/internal/netcheck"
	"github.com/meshvm/meshvm/vmagent/internal/postinst"
	"github.com/meshvm/meshvm/vmagent/internal/sidecar"
	"github.com/meshvm/meshvm/vmagent/internal/vmfiles"
)

func hostsEntries(in []*agentv1.HostsEntry) ([]hostsfile.Entry, error) {
	if len(in) == 0 {
		return nil, nil
	}
	out := make([]hostsfile.Entry, 0, len(in))
	for _, e := range in {
		ip, err := netip.ParseAddr(e.GetIp())
		if err != nil {
			return nil, agenterr.Invalid("hosts entry %q %v: the IP is not valid", e.GetIp(), e.GetNames())
		}
		out = append(out, hostsfile.Entry{IP: ip, Names: e.GetNames()})
	}
	return out, nil
}

var stepOutcomes = map[postinst.Outcome]agentv1.StepOutcome{
	postinst.Unchanged:   agentv1.StepOutcome_STEP_OUTCOME_UNCHANGED,
	postinst.Changed:     agentv1.StepOutcome_STEP_OUTCOME_CHANGED,
	postinst.WouldChange: agentv1.StepOutcome_STEP_OUTCOME_WOULD_CHANGE,
	postinst.Failed:      agentv1.StepOutcome_STEP_OUTCOME_FAILED,
	postinst.Skipped:     agentv1.StepOutcome_STEP_OUTCOME_SKIPPED,
}

func stepResults(rs []postinst.Result) []*agentv1.StepResult {
	out := make([]*agentv1.StepResult, 0, len(rs))
	for _, r := range rs {
		out = append(out, &agentv1.StepResult{Name: r.Name, Outcome: stepOutcomes[r.Outcome], Detail: r.Detail})
	}
	return out
}

func sidecarState(st sidecar.State, err error) *agentv1.SidecarState {
	out := &agentv1.SidecarState{
		Unit: st.Unit, LoadState: st.LoadState, ActiveState: st.ActiveState, SubState: st.SubState,
		UnitFileState: st.UnitFileState, MainPid: st.MainPID, Restarts: st.Restarts,
	}
	if !st.ActiveSince.IsZero() {
		out.ActiveSince = timestamppb.New(st.ActiveSince)
	}
	if err != nil {
		out.Error = err.Error()
	}
	return out
}

func certInfo(path string, c credinfo.Certificate) *agentv1.CertificateInfo {
	return &agentv1.CertificateInfo{
		Path: path, Subject: c.Subject, UriSans: c.URISANs,
		NotBefore: timestamppb.New(c.NotBefore), NotAfter: timestamppb.New(c.NotAfter),
	}
}

func tokenInfo(path, persistent string, t credinfo.Token) *agentv1.TokenInfo {
	out := &agentv1.TokenInfo{
		Path: path, Subject: t.Subject, Audiences: t.Audiences,
		ExpiresAt: timestamppb.New(t.ExpiresAt), PersistentPath: persistent,
		BoundSecretName: t.BoundSecret.Name, BoundSecretUid: t.BoundSecret.UID,
	}
	if !t.IssuedAt.IsZero() {
		out.IssuedAt = timestamppb.New(t.IssuedAt)
	}
	return out
}

func fileStat(f vmfiles.Stat) *agentv1.FileStat {
	return &agentv1.FileStat{
		Path: f.Path, Exists: f.Exists, Size: uint64(max(f.Size, 0)), Sha256: f.SHA256, Mode: f.Mode,
		Owner: f.Owner, Group: f.Group,
	}
}

func fileOutcome(o vmfiles.Outcome) agentv1.FileOutcome {
	if o == vmfiles.Unchanged {
		return agentv1.FileOutcome_FILE_OUTCOME_UNCHANGED
	}
	return agentv1.FileOutcome_FILE_OUTCOME_WRITTEN
}

func logSource(s agentv1.LogSource) (sidecar.LogSource, error) {
	switch s {
	case agentv1.LogSource_LOG_SOURCE_JOURNAL, agentv1.LogSource_LOG_SOURCE_UNSPECIFIED:
		return sidecar.Journal, nil
	case agentv1.LogSource_LOG_SOURCE_PROXY_LOG:
		return sidecar.ProxyLog, nil
	case agentv1.LogSource_LOG_SOURCE_PROXY_ERR_LOG:
		return sidecar.ProxyErrLog, nil
	}
	return 0, agenterr.Invalid("log source %v: want JOURNAL, PROXY_LOG or PROXY_ERR_LOG", s)
}

func logLines(in []sidecar.LogLine) []*agentv1.LogLine {
	out := make([]*agentv1.LogLine, 0, len(in))
	for _, l := range in {
		ll := &agentv1.LogLine{Text: l.Text}
		if !l.Time.IsZero() {
			ll.Time = timestamppb.New(l.Time)
		}
		out = append(out, ll)
	}
	return out
}

func networkReport(r netcheck.Report) *agentv1.CheckNetworkResponse {
	out := &agentv1.CheckNetworkResponse{SidecarAddress: r.SidecarAddress, SidecarAddressSource: r.SidecarAddressSource}
	for _, b := range r.FirewallBackends {
		out.FirewallBackends = append(out.FirewallBackends, &agentv1.FirewallBackend{
			Name: b.Name, Available: b.Available, IstioChains: b.IstioChains, Error: b.Err,
		})
	}
	for _, i := range r.Interfaces {
		out.Interfaces = append(out.Interfaces, &agentv1.NetworkInterface{
			Name: i.Name, Up: i.Up, Mac: i.MAC, Mtu: uint32(max(i.MTU, 0)), Addresses: i.Addresses,
		})
	}
	for _, rt := range r.DefaultRoutes {
		out.DefaultRoutes = append(out.DefaultRoutes, &agentv1.Route{Destination: rt.Destination, Gateway: rt.Gateway, Interface: rt.Interface})
	}
	return out
}

// osRelease returns PRETTY_NAME from /etc/os-release.
func osRelease(root *fsroot.Root) string {
	for _, p := range []string{"/etc/os-release", "/usr/lib/os-release"} {
		data, err := root.ReadFile(p)
		if err != nil {
			continue
		}
		env := map[string]string{}
		if envfile.Parse(p, data, env) == nil && env["PRETTY_NAME"] != "" {
			return env["PRETTY_NAME"]
		}
		sc := bufio.NewScanner(bytes.NewReader(data))
		for sc.Scan() {
			if v, ok := strings.CutPrefix(sc.Text(), "PRETTY_NAME="); ok {
				return strings.Trim(v, `"'`)
			}
		}
	}
	return ""
}

// svcIP reads ISTIO_SVC_IP from the delivered cluster.env. Its directory is
// istio-proxy's: read as untrusted (no links, regular file only, capped).
func svcIP(root *fsroot.Root) string {
	const p = "/var/lib/istio/envoy/cluster.env"
	data, err := root.ReadLimited(p, 1<<20)
	if err != nil {
		return ""
	}
	env := map[string]string{}
	if envfile.Parse(p, data, env) != nil {
		return ""
	}
	return env["ISTIO_SVC_IP"]
}

var captureStates = map[capture.State]agentv1.CaptureState{
	capture.OK:      agentv1.CaptureState_CAPTURE_STATE_OK,
	capture.Fail:    agentv1.CaptureState_CAPTURE_STATE_FAIL,
	capture.Off:     agentv1.CaptureState_CAPTURE_STATE_OFF,
	capture.Skipped: agentv1.CaptureState_CAPTURE_STATE_SKIPPED,
}

// captureVerdict converts the verdict, with the validator's record.
func captureVerdict(v capture.Verdict) *agentv1.CaptureVerdict {
	out := &agentv1.CaptureVerdict{State: captureStates[v.State], Backends: v.Backends}
	for _, c := range v.Checks {
		out.Checks = append(out.Checks, &agentv1.CaptureCheck{Name: c.Name, State: captureStates[c.State], Detail: c.Detail, Fix: c.Fix})
	}
	if rec := v.Validation; rec != nil {
		out.Validation = &agentv1.CaptureValidation{RanAt: timestamppb.New(rec.At), Passed: rec.Passed, Output: rec.Output}
	}
	return out
}
