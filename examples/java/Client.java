// Call an API with tokens from token-broker, with java.net.http (Java >= 11).
// Run it as a single file:  java Client.java
//
// `TokenBroker.send` is `HttpClient.send` with the token added: it asks the broker for
// the token on every request (the broker refreshes ahead of expiry, so there is nothing
// to cache), and when the API still says 401 it reports that token to the broker
// instead of refreshing itself, then sends the request once more with the token it gets
// back. However many processes report the same token, the broker makes one refresh and
// all of them get its result. While the broker starts (a sidecar beside the app) it
// refuses connections, and while it has no valid token it answers 503 with Retry-After:
// both are waited out. Any other answer throws a `BrokerException` with the broker's
// JSON error. `Accept: text/plain` gets the bare token and the refresh call takes a
// form, so this needs no JSON library.
//
// Environment: TOKEN_BROKER_URL, CREDENTIAL, API_URL, ROUNDS (0: forever), INTERVAL
// (seconds), FORCE_REJECT_FIRST=1 (spoil the first token so the 401 path runs).

import java.io.IOException;
import java.net.ConnectException;
import java.net.URI;
import java.net.URLEncoder;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.time.Duration;

public class Client {
    public static void main(String[] args) throws Exception {
        String apiUrl = env("API_URL", "http://127.0.0.1:8657/api/whoami");
        int rounds = Integer.parseInt(env("ROUNDS", "0"));
        double interval = Double.parseDouble(env("INTERVAL", "5"));
        TokenBroker broker = new TokenBroker(env("TOKEN_BROKER_URL", "http://127.0.0.1:8656"), env("CREDENTIAL", "demo"));
        broker.spoilNext = "1".equals(System.getenv("FORCE_REJECT_FIRST"));
        for (int n = 1; rounds == 0 || n <= rounds; n++) {
            int status;
            try {
                status = broker.send(HttpRequest.newBuilder(URI.create(apiUrl)).timeout(Duration.ofSeconds(15)),
                        HttpResponse.BodyHandlers.discarding()).statusCode();
            } catch (BrokerException e) {
                System.err.println(e.getMessage());
                System.exit(1);
                return;
            }
            if (broker.retried) {
                System.out.println("round " + n + ": 401, reported the rejected token, retry: whoami " + status);
            } else {
                System.out.println("round " + n + ": whoami " + status);
            }
            if (status != 200) {
                System.exit(1);
            }
            if (rounds == 0 || n < rounds) {
                Thread.sleep((long) (interval * 1000));
            }
        }
    }

    static String env(String name, String fallback) {
        String value = System.getenv(name);
        return value == null || value.isEmpty() ? fallback : value;
    }

    /** The broker refused: its status and JSON error. */
    static class BrokerException extends IOException {
        BrokerException(String message) {
            super(message);
        }
    }

    /** Tokens from token-broker for an HttpClient's requests. */
    static class TokenBroker {
        // HTTP/1.1: the default HTTP/2 would try an h2c upgrade on plain http first.
        final HttpClient http = HttpClient.newBuilder()
                .version(HttpClient.Version.HTTP_1_1)
                .connectTimeout(Duration.ofSeconds(5))
                .build();
        final String base;
        final int attempts = 30;
        boolean retried; // whether the last request was sent again after a 401
        boolean spoilNext; // for the demo: send a bad token once

        TokenBroker(String url, String credential) {
            this.base = url.replaceAll("/+$", "") + "/token/" + credential;
        }

        /** Sends `request` with the token; once more with a fresh one after a 401. */
        <T> HttpResponse<T> send(HttpRequest.Builder request, HttpResponse.BodyHandler<T> body)
                throws IOException, InterruptedException {
            String token = token();
            if (spoilNext) {
                token = "spoiled-" + token;
                spoilNext = false;
            }
            retried = false;
            HttpResponse<T> response = http.send(request.setHeader("Authorization", "Bearer " + token).build(), body);
            if (response.statusCode() != 401) {
                return response;
            }
            retried = true;
            return http.send(request.setHeader("Authorization", "Bearer " + reportRejected(token)).build(), body);
        }

        String token() throws IOException, InterruptedException {
            return ask(HttpRequest.newBuilder(URI.create(base)).GET());
        }

        String reportRejected(String token) throws IOException, InterruptedException {
            String form = "rejected_token=" + URLEncoder.encode(token, StandardCharsets.UTF_8);
            return ask(HttpRequest.newBuilder(URI.create(base + "/refresh"))
                    .header("Content-Type", "application/x-www-form-urlencoded")
                    .POST(HttpRequest.BodyPublishers.ofString(form)));
        }

        // Token endpoints demand the Token-Broker header, so a forged request (SSRF, a
        // web page) cannot read tokens.
        String ask(HttpRequest.Builder builder) throws IOException, InterruptedException {
            HttpRequest request = builder.header("Token-Broker", "1").header("Accept", "text/plain")
                    .timeout(Duration.ofSeconds(15)).build();
            for (int attempt = 1; attempt <= attempts; attempt++) {
                HttpResponse<String> response;
                try {
                    response = http.send(request, HttpResponse.BodyHandlers.ofString());
                } catch (ConnectException e) { // the broker is starting
                    Thread.sleep(1000);
                    continue;
                }
                long retryAfter = response.headers().firstValue("Retry-After").map(TokenBroker::seconds).orElse(0L);
                if (response.statusCode() == 503 && retryAfter > 0) {
                    Thread.sleep(Math.min(retryAfter, 10) * 1000);
                    continue;
                }
                if (response.statusCode() != 200) {
                    throw new BrokerException("token-broker answered " + response.statusCode() + ": " + response.body());
                }
                return response.body().strip();
            }
            throw new BrokerException("no token from " + request.uri() + " after " + attempts + " attempts");
        }

        static long seconds(String value) {
            try {
                return Long.parseLong(value.trim());
            } catch (NumberFormatException e) {
                return 1;
            }
        }
    }
}
