// Call an API with tokens from token-broker, with java.net.http (Java >= 11).
// Run it as a single file:  java Client.java
//
// Demonstrates the client's whole part: ask the broker for the token every time (it
// refreshes ahead of expiry, so there is nothing to cache), and when the API still says
// 401, report that token to the broker instead of refreshing yourself. However many
// processes report the same token, the broker makes one refresh and all of them get its
// result. `Accept: text/plain` gets the bare token and the refresh call takes a form,
// so this needs no JSON library; an application with one can read the JSON answer.
//
// Environment: TOKEN_BROKER_URL, CREDENTIAL, API_URL, ROUNDS (0: forever), INTERVAL
// (seconds), FORCE_REJECT_FIRST=1 (spoil the first token so the 401 path runs).

import java.net.URI;
import java.net.URLEncoder;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.time.Duration;

public class Client {
    static final String BROKER = env("TOKEN_BROKER_URL", "http://127.0.0.1:8656").replaceAll("/+$", "");
    static final String CREDENTIAL = env("CREDENTIAL", "demo");
    static final String API_URL = env("API_URL", "http://127.0.0.1:8657/api/whoami");
    // HTTP/1.1: the default HTTP/2 would try an h2c upgrade on plain http first.
    static final HttpClient HTTP = HttpClient.newBuilder()
            .version(HttpClient.Version.HTTP_1_1)
            .connectTimeout(Duration.ofSeconds(5))
            .build();

    public static void main(String[] args) throws Exception {
        int rounds = Integer.parseInt(env("ROUNDS", "0"));
        double interval = Double.parseDouble(env("INTERVAL", "5"));
        boolean forceReject = "1".equals(System.getenv("FORCE_REJECT_FIRST"));
        for (int n = 1; rounds == 0 || n <= rounds; n++) {
            String token = getToken();
            if (forceReject && n == 1) {
                token = "spoiled-" + token;
            }
            int status = whoami(token);
            if (status == 401) {
                status = whoami(reportRejected(token));
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

    static String getToken() throws Exception {
        return broker(HttpRequest.newBuilder(URI.create(BROKER + "/token/" + CREDENTIAL)).GET());
    }

    static String reportRejected(String token) throws Exception {
        String form = "rejected_token=" + URLEncoder.encode(token, StandardCharsets.UTF_8);
        return broker(HttpRequest.newBuilder(URI.create(BROKER + "/token/" + CREDENTIAL + "/refresh"))
                .header("Content-Type", "application/x-www-form-urlencoded")
                .POST(HttpRequest.BodyPublishers.ofString(form)));
    }

    // Token endpoints demand the Token-Broker header, so a forged request (SSRF, a web
    // page) cannot read tokens.
    static String broker(HttpRequest.Builder request) throws Exception {
        HttpResponse<String> response = HTTP.send(
                request.header("Token-Broker", "1").header("Accept", "text/plain")
                        .timeout(Duration.ofSeconds(15)).build(),
                HttpResponse.BodyHandlers.ofString());
        if (response.statusCode() != 200) {
            throw new IllegalStateException("broker answered " + response.statusCode() + ": " + response.body());
        }
        return response.body().strip();
    }

    static int whoami(String token) throws Exception {
        HttpRequest request = HttpRequest.newBuilder(URI.create(API_URL))
                .header("Authorization", "Bearer " + token)
                .timeout(Duration.ofSeconds(15))
                .build();
        return HTTP.send(request, HttpResponse.BodyHandlers.discarding()).statusCode();
    }

    static String env(String name, String fallback) {
        String value = System.getenv(name);
        return value == null || value.isEmpty() ? fallback : value;
    }
}
