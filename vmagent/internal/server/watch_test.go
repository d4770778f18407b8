package server_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/meshvm/meshvm/pkg/agentspec"
	"github.com/meshvm/meshvm/pkg/mtls"
	agentv1 "github.com/meshvm/meshvm/proto/meshvm/agent/v1"
)

// recvWithin is the stream's next message, failing after d.
func recvWithin(t *testing.T, s agentv1.AgentService_WatchClient, d time.Duration) *agentv1.WatchResponse {
	t.Helper()
	type res struct {
		m   *agentv1.WatchResponse
		err error
	}
	ch := make(chan res, 1)
	go func() { m, err := s.Recv(); ch <- res{m, err} }()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatalf("watch: %v", r.err)
		}
		return r.m
	case <-time.After(d):
		t.Fatalf("no watch message within %s", d)
	}
	return nil
}

// A real agent over mTLS: the first message is the whole state; a
// certificate pilot-agent writes and an app that stops answering each
// arrive as one message naming what changed, within about a second.
func TestWatchSendsStateThenChanges(t *testing.T) {
	e := startAgent(t)
	v, err := e.client(t).Version(ctxT(t))
	must(t, err)
	if !slices.Contains(v.GetCapabilities(), agentspec.WatchCapability) {
		t.Fatalf("capabilities %v lack %s", v.GetCapabilities(), agentspec.WatchCapability)
	}

	app, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") })}
	go srv.Serve(app)
	port := app.Addr().(*net.TCPAddr).Port

	ctx, cancel := context.WithCancel(ctxT(t))
	defer cancel()
	stream, err := e.raw(t).Watch(ctx, &agentv1.WatchRequest{
		AppProbe:       &agentv1.ProbeRequest{Kind: agentv1.ProbeKind_PROBE_KIND_HTTP, Port: uint32(port)},
		AppProbePeriod: durationpb.New(time.Second),
	})
	must(t, err)
	first := recvWithin(t, stream, 5*time.Second)
	if first.GetSequence() != 1 || len(first.GetChanged()) != 0 {
		t.Errorf("first message: sequence %d, changed %v; want 1 and nothing (the whole state)", first.GetSequence(), first.GetChanged())
	}
	if first.GetSidecar() == nil || first.GetAgentStartedAt() == nil || first.GetWorkloadCertificate() != nil {
		t.Errorf("first message lacks the sidecar or the agent's start, or has a certificate none wrote: %v", first)
	}
	if !first.GetApp().GetOk() {
		t.Errorf("first message's app probe: %v, want ok", first.GetApp())
	}

	// pilot-agent writes the workload certificate.
	ca, err := mtls.NewCA("istiod", time.Hour)
	must(t, err)
	cert, _, err := ca.Issue(mtls.IssueOptions{CommonName: "vm1", NotAfter: time.Now().Add(time.Hour)})
	must(t, err)
	must(t, os.MkdirAll(filepath.Join(e.dir, "etc/certs"), 0o755))
	wrote := time.Now()
	must(t, os.WriteFile(filepath.Join(e.dir, "etc/certs/cert-chain.pem"), cert, 0o644))
	m := recvWithin(t, stream, 5*time.Second)
	if !slices.Equal(m.GetChanged(), []agentv1.WatchTopic{agentv1.WatchTopic_WATCH_TOPIC_CERTIFICATE}) || m.GetWorkloadCertificate().GetSubject() == "" {
		t.Fatalf("after the certificate was written: changed %v, certificate %v", m.GetChanged(), m.GetWorkloadCertificate())
	}
	t.Logf("certificate seen %s after it was written", time.Since(wrote).Round(time.Millisecond))

	// The app stops answering.
	must(t, srv.Close())
	stopped := time.Now()
	m = recvWithin(t, stream, 5*time.Second)
	if !slices.Equal(m.GetChanged(), []agentv1.WatchTopic{agentv1.WatchTopic_WATCH_TOPIC_APP}) || m.GetApp().GetOk() || m.GetApp().GetError() == "" {
		t.Fatalf("after the app stopped: changed %v, app %v", m.GetChanged(), m.GetApp())
	}
	t.Logf("app failure seen %s after it stopped", time.Since(stopped).Round(time.Millisecond))
	if m.GetSequence() != 3 {
		t.Errorf("sequence %d, want 3: one message per change", m.GetSequence())
	}
}

// Bad requests are refused at once; watches beyond max_watch_streams are
// refused naming the limit, and a slot comes back when a watch ends.
func TestWatchRefusesBadRequestsAndHoldsItsLimit(t *testing.T) {
	limits := testLimits()
	limits.MaxWatchStreams = 2
	e := startAgentWith(t, limits)
	c := e.raw(t)

	for name, req := range map[string]*agentv1.WatchRequest{
		"a probe off loopback": {AppProbe: &agentv1.ProbeRequest{Kind: agentv1.ProbeKind_PROBE_KIND_TCP, Host: "10.1.2.3", Port: 80}},
		"a port out of range":  {AppProbe: &agentv1.ProbeRequest{Kind: agentv1.ProbeKind_PROBE_KIND_TCP, Port: 70000}},
		"a period too short":   {AppProbePeriod: durationpb.New(time.Millisecond)},
	} {
		s, err := c.Watch(ctxT(t), req)
		must(t, err)
		if _, err := s.Recv(); status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: got %v, want InvalidArgument", name, err)
		}
	}

	// Slots of the refused calls come back as gRPC closes their streams.
	var cancels []context.CancelFunc
	for range 2 {
		ctx, cancel := context.WithCancel(ctxT(t))
		cancels = append(cancels, cancel)
		watchOnceFree(t, c, ctx)
	}
	s, err := c.Watch(ctxT(t), &agentv1.WatchRequest{})
	must(t, err)
	_, err = s.Recv()
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(status.Convert(err).Message(), "limits.max_watch_streams") {
		t.Fatalf("a third watch: got %v, want RESOURCE_EXHAUSTED naming limits.max_watch_streams", err)
	}
	cancels[0]()
	watchOnceFree(t, c, ctxT(t))
}

// watchOnceFree opens a watch, retrying while every slot is taken, and
// fails the test when none comes free within 5s.
func watchOnceFree(t *testing.T, c agentv1.AgentServiceClient, ctx context.Context) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		s, err := c.Watch(ctx, &agentv1.WatchRequest{})
		must(t, err)
		if _, err = s.Recv(); err == nil {
			return
		}
		if status.Code(err) != codes.ResourceExhausted || time.Now().After(deadline) {
			t.Fatalf("watch: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
