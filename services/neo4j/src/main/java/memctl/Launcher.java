package memctl;

import java.nio.file.Path;
import java.util.Map;
import java.util.concurrent.CountDownLatch;

import org.neo4j.configuration.GraphDatabaseSettings;
import org.neo4j.configuration.connectors.BoltConnector;
import org.neo4j.configuration.connectors.HttpConnector;
import org.neo4j.configuration.helpers.SocketAddress;
import org.neo4j.dbms.api.DatabaseManagementService;
import org.neo4j.dbms.api.DatabaseManagementServiceBuilder;
import org.neo4j.io.ByteUnit;

/**
 * Starts an embedded Neo4j 5 Community DBMS with its Bolt connector on loopback.
 *
 * Usage: Launcher HOME_DIR PORT [PAGE_CACHE_MB]. The password comes from NEO4J_PASSWORD (auth is
 * off when it is empty) so it never shows in the process list. Prints "NEO4J READY bolt://..."
 * once Bolt accepts connections and shuts the DBMS down cleanly on SIGTERM.
 */
public final class Launcher {
    private Launcher() {}

    public static void main(String[] args) throws Exception {
        if (args.length < 2) {
            System.err.println("usage: Launcher HOME_DIR PORT [PAGE_CACHE_MB]");
            System.exit(2);
        }
        Path home = Path.of(args[0]).toAbsolutePath();
        int port = Integer.parseInt(args[1]);
        long pageCacheMb = args.length > 2 ? Long.parseLong(args[2]) : 128L;
        String password = System.getenv().getOrDefault("NEO4J_PASSWORD", "");
        boolean auth = !password.isEmpty();

        DatabaseManagementService dbms = new DatabaseManagementServiceBuilder(home)
                .setConfig(BoltConnector.enabled, true)
                .setConfig(BoltConnector.listen_address, new SocketAddress("127.0.0.1", port))
                .setConfig(BoltConnector.advertised_address, new SocketAddress("127.0.0.1", port))
                .setConfig(HttpConnector.enabled, false)
                .setConfig(GraphDatabaseSettings.auth_enabled, auth)
                .setConfig(GraphDatabaseSettings.pagecache_memory, ByteUnit.mebiBytes(pageCacheMb))
                .build();

        if (auth) {
            // Embedded calls bypass auth, so the launcher can set the password the driver will use.
            dbms.database("system").executeTransactionally(
                    "ALTER USER neo4j SET PASSWORD $password CHANGE NOT REQUIRED",
                    Map.of("password", password));
        }

        CountDownLatch stopped = new CountDownLatch(1);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            System.out.println("NEO4J STOPPING");
            System.out.flush();
            dbms.shutdown();
            stopped.countDown();
        }, "neo4j-shutdown"));

        System.out.println("NEO4J READY bolt://127.0.0.1:" + port + " auth=" + auth);
        System.out.flush();
        stopped.await();
    }
}
