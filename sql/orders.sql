-- The orders table of the seed architecture and its ten initial orders.
--
-- Run it with psql (psql -f sql/orders.sql) or let `orderstream init` run it: init embeds this
-- file and replaces the names ROLL001_orders and ROLL001_orders_position_idx with the
-- configured table (folded to lower case, as PostgreSQL folds unquoted names, then quoted).
-- Idempotent: a second run leaves exactly the same ten seed rows.
--
-- created_at is TIMESTAMP without time zone and holds UTC: the default is the transaction's
-- start time in UTC whatever the session's TimeZone. It is NOT NULL because change capture
-- orders rows by it; a row without it could never be captured.

CREATE TABLE IF NOT EXISTS ROLL001_orders (
    order_id        SERIAL PRIMARY KEY,
    customer_name   VARCHAR(255),
    restaurant_name VARCHAR(255),
    item            VARCHAR(255),
    amount          NUMERIC(10, 2),
    order_status    VARCHAR(50),
    created_at      TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC')
);

-- The capture position (created_at, order_id): polls read it in this order, by index.
CREATE INDEX IF NOT EXISTS ROLL001_orders_position_idx ON ROLL001_orders (created_at, order_id);

INSERT INTO ROLL001_orders
    (order_id, customer_name, restaurant_name, item, amount, order_status, created_at)
VALUES
    (101, 'John Doe',      'Burger Junction', 'Veg Burger',           220.00, 'PLACED',    '2025-01-18 12:24:00'),
    (102, 'Priya Sharma',  'Spice Route',     'Paneer Tikka',         340.50, 'PLACED',    '2025-01-18 12:25:00'),
    (103, 'Amit Verma',    'Pizza Palace',    'Margherita Pizza',     450.00, 'CONFIRMED', '2025-01-18 12:26:00'),
    (104, 'Sara Khan',     'Sushi World',     'California Roll',      599.99, 'PLACED',    '2025-01-18 12:27:00'),
    (105, 'Rahul Mehta',   'Burger Junction', 'Chicken Burger',       260.00, 'DELIVERED', '2025-01-18 12:28:00'),
    (106, 'Emily Clark',   'Pasta Point',     'Alfredo Pasta',        380.25, 'PLACED',    '2025-01-18 12:29:00'),
    (107, 'Vikram Singh',  'Biryani House',   'Chicken Biryani',      299.00, 'PREPARING', '2025-01-18 12:30:00'),
    (108, 'Neha Gupta',    'Taco Town',       'Veg Tacos',            199.50, 'PLACED',    '2025-01-18 12:31:00'),
    (109, 'Arjun Nair',    'Dosa Corner',     'Masala Dosa',          150.00, 'CANCELLED', '2025-01-18 12:32:00'),
    (110, 'Li Wei',        'Noodle Bar',      'Hakka Noodles',        275.75, 'PLACED',    '2025-01-18 12:33:00')
ON CONFLICT (order_id) DO NOTHING;

-- The next order gets 111 (or follows the highest id already present).
SELECT setval(pg_get_serial_sequence('ROLL001_orders', 'order_id'),
              GREATEST((SELECT max(order_id) FROM ROLL001_orders), 110));
